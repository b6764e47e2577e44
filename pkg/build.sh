#!/bin/sh
# Build the binary that ships: release profile, linked statically (static-pie: no dynamic
# loader, no shared object at start-up; docs/PERFORMANCE.md "The floor"), reproducibly
# (--remap-path-prefix: the checkout's and CARGO_HOME's paths, which panic locations carry,
# become /build and /cargo), the functions a message runs through laid out together
# (pkg/hot-symbols.txt, below), symbols stripped. Prints the binary's path. Arguments go to
# `cargo build`.
#
# The target is pkg/target.sh's choice: musl where its standard library is installed, else
# the host's glibc. Either way an explicit --target: with the host's own triple as an implicit
# target, crt-static would also apply to the proc-macro crates (clap's and serde's derives),
# which cannot be linked statically.
#
# pkg/hot-symbols.txt names, in the order they first run, the functions that an accepted, a
# refused and a `-bs` message execute (pkg/hot-symbols.sh writes it from callgrind). The
# linker (rust-lld, Rust's default on x86_64 Linux) puts them first in .text, so that the
# pages a message touches are a few hundred KiB side by side instead of spread over 4 MiB:
# 107 → 80 page faults and ~5 % of an accepted message's wall time (docs/PERFORMANCE.md,
# "Hot code together"). A name the code no longer has is skipped; the list then only helps
# less. Symbols are stripped here (`-C strip=symbols` in RUSTFLAGS) and not in Cargo.toml's
# profile, because the profile is part of the hash in every mangled name: the profiling build
# (MAILGATE_BUILD=symbols, unstripped, unordered) then names the functions exactly as the
# shipped build does.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
target=$(pkg/target.sh)
if [ "$target" = x86_64-unknown-linux-musl ]; then
    # ring's C and assembly, compiled against musl's headers (Debian's musl-tools).
    CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-$(command -v musl-gcc || echo gcc)}
    export CC_x86_64_unknown_linux_musl
    # Linked by the toolchain's own LLD, as the glibc target is by default: the symbol
    # ordering below is an LLD option.
    RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=lld -C link-arg=-B$(rustc --print sysroot)/lib/rustlib/$host/bin/gcc-ld"
fi
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# -z pack-relative-relocs: the 4,500 relocations a static-pie applies at start-up as a
# 1.3 KiB DT_RELR table instead of 108 KiB of RELA entries (glibc >= 2.36, musl >= 1.2.4): 2
# page faults less.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$PWD=/build"
if [ "${MAILGATE_BUILD:-}" != symbols ]; then
    RUSTFLAGS="$RUSTFLAGS -C strip=symbols -C link-arg=-Wl,--symbol-ordering-file=$PWD/pkg/hot-symbols.txt -C link-arg=-Wl,--no-warn-symbol-ordering"
fi
export RUSTFLAGS
cargo build --release --target "$target" "$@" >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/$target/release/mailgate"
