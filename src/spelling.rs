//! "Did you mean …?": the closest of a few known words to a misspelt one, for the sendmail /
//! subcommand router (a typo must never send mail) and for check-config's unknown keys. Pure.

/// The candidate within edit distance 2 of `word` (1 for a command of four letters or
/// fewer), the closest first.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        // A short command is near too many short words ("joe" is 2 from "top"): one edit.
        .filter(|(d, c)| *d <= if c.len() <= 4 { 1 } else { 2 })
        .min()
        .map(|(_, c)| c)
}

/// Edit distance over chars where swapping two neighbours is one edit, like a single
/// insertion, deletion or substitution (optimal string alignment): "prot" is 1 from "port".
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("stats", "status"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("tpo", "top"), 1);
        assert_eq!(edit_distance("joe", "top"), 2);
        const SUBS: &[&str] = crate::admin::SUBCOMMANDS;
        assert_eq!(closest("qeue", SUBS), Some("queue"));
        assert_eq!(closest("alice", SUBS), None);
        // A short word is near too many: one edit only.
        assert_eq!(closest("joe", &["top"]), None);
    }
}
