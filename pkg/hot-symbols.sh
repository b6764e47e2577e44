#!/usr/bin/env bash
# Write pkg/hot-symbols.txt: the functions that a message runs through, in the order callgrind
# first meets them, for pkg/build.sh's linker to put side by side (see the comment there).
# Run it after a change of the hot path, of a dependency or of the Rust toolchain (mangled
# names carry a hash of all three), then rebuild: `pkg/hot-symbols.sh && pkg/build.sh`.
#
#   sudo pkg/hot-symbols.sh        # needs valgrind and Postfix's smtp-sink; runs as root
#
# The paths profiled: an accepted message through mailgate's Unix lane and through TCP, a
# refused one (account over its limit), and a `-bs` session (Symfony Mailer's way). Each runs
# once to warm the state files, then once under callgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "hot-symbols: run as root (smtp-sink drops to nobody)" >&2; exit 1; }
for tool in valgrind callgrind_annotate smtp-sink python3; do
    command -v "$tool" >/dev/null || { echo "hot-symbols: $tool is missing (apt-get install valgrind postfix python3)" >&2; exit 1; }
done

# shellcheck source=bench/lib.sh
. bench/lib.sh
scratch_dir hot

# The profiling build: unstripped and unordered, in a target directory of its own, with the
# same profile as the shipped build (so the same mangled names).
BIN=$(CARGO_TARGET_DIR="$PWD/target/hot-symbols" MAILGATE_BUILD=symbols pkg/build.sh --quiet)

start_sink
smtp-sink -u nobody "unix:$work/lane.sock" 64 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -S "$work/lane.sock" ] && break; sleep 0.05; done
[ -S "$work/lane.sock" ] || { echo "hot-symbols: smtp-sink did not create $work/lane.sock" >&2; exit 1; }

# The shipped example configuration, pointed at the sinks and a state directory of its own.
mkconf() { # name relay-line sed-script
    mkdir -p "$work/$1/state"
    {
        echo "state_dir = \"$work/$1/state\""
        sed -e "s|^port = 825.*|$2|" -e "s|^\[log\]|[log]\nfile = \"$work/$1/mailgate.log\"|" \
            -e 's|^admin = "root".*|admin = ""|' -e 's|^exempt = true.*|exempt = false|' \
            -e "${3:-}" mailgate.toml.example
    } >"$work/$1/mailgate.toml"
    sed -i 's|^trusted_owners = .*||' "$work/$1/mailgate.toml"
    sed -i "s|^\[relay\]|[relay]\ntrusted_owners = [\"root\", \"nobody\"]|" "$work/$1/mailgate.toml"
}
mkconf lane "socket = \"$work/lane.sock\""
mkconf tcp "port = $SINK_PORT"
mkconf refused "port = $SINK_PORT" 's/messages = [0-9]*/messages = 1/g'

cat >"$work/message" <<'MAIL'
To: Customer <customer@example.net>
Subject: Your order #4711 at shop.example.org
From: Shop <shop@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8
X-PHP-Originating-Script: 33:checkout.php

Thank you for your order. We will ship it as soon as possible, usually within 24 hours.
MAIL
printf 'EHLO php.example.org\r\nMAIL FROM:<shop@example.org>\r\nRCPT TO:<customer@example.net>\r\nDATA\r\n' >"$work/session"
sed 's/$/\r/' "$work/message" >>"$work/session"
printf '.\r\nQUIT\r\n' >>"$work/session"

profile() { # name config stdin args...
    local out="$work/callgrind.$1"
    MAILGATE_CONFIG="$work/$2/mailgate.toml" "$BIN" "${@:4}" <"$3" >/dev/null 2>&1 || true
    MAILGATE_CONFIG="$work/$2/mailgate.toml" valgrind --tool=callgrind --demangle=no \
        --callgrind-out-file="$out" "$BIN" "${@:4}" <"$3" >/dev/null 2>"$out.err" || true
    [ -s "$out" ] || { echo "hot-symbols: callgrind wrote nothing for $1:" >&2; cat "$out.err" >&2; exit 1; }
}
profile lane lane "$work/message" -t -i
profile tcp tcp "$work/message" -t -i
profile refused refused "$work/message" -t -i
profile session lane "$work/session" -bs
grep -q 'status=sent' "$work/lane/mailgate.log" || { echo "hot-symbols: the lane message was not sent" >&2; exit 1; }
grep -q 'status=refused' "$work/refused/mailgate.log" || { echo "hot-symbols: the refused message was not refused" >&2; exit 1; }

# Function names in the order they first appear (callgrind names a function in full the
# first time, by number after that); addresses without a name are glibc's PLT stubs.
nm "$BIN" >"$work/symbols"
python3 - "$work" "$work/symbols" >pkg/hot-symbols.txt <<'PY'
import re, sys
seen, order = set(), []
for name in ("lane", "tcp", "refused", "session"):
    for line in open(f"{sys.argv[1]}/callgrind.{name}", errors="replace"):
        m = re.match(r"c?fn=\(\d+\) (\S+)$", line.rstrip("\n"))
        if not m or m.group(1).startswith("0x"):
            continue
        symbol = re.sub(r"'\d+$", "", m.group(1))  # callgrind's mark of a recursive call
        if symbol not in seen:
            seen.add(symbol)
            order.append(symbol)
# glibc picks its string functions for the CPU it runs on (ifunc); valgrind's CPU has no
# AVX-512, so each one it ran stands for all its variants.
variants = {}
for line in open(sys.argv[2]):
    name = line.split()[-1]
    m = re.match(r"(__\w+?)_(sse2|ssse3|sse4|avx|avx2|avx512|evex)(_|$)", name)
    if m:
        variants.setdefault(m.group(1), []).append(name)
with_variants = []
for symbol in order:
    m = re.match(r"(__\w+?)_(sse2|ssse3|sse4|avx|avx2|avx512|evex)(_|$)", symbol)
    with_variants += [symbol] + [v for v in variants.get(m.group(1), []) if v != symbol] if m else [symbol]
print("\n".join(dict.fromkeys(with_variants)))
PY
# cargo relinks on a change of RUSTFLAGS, not of a file a flag names.
cargo clean --release --target "$(pkg/target.sh 2>/dev/null)" -p mailgate >/dev/null 2>&1 || true
echo "hot-symbols: $(wc -l <pkg/hot-symbols.txt) functions in pkg/hot-symbols.txt" >&2
