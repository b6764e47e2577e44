#!/bin/sh
# Build the binary that ships: release profile, linked statically (static-pie: no dynamic
# loader, no shared object at start-up; docs/PERFORMANCE.md "The floor"), reproducibly
# (--remap-path-prefix: the checkout's and CARGO_HOME's paths, which panic locations carry,
# become /build and /cargo). Prints the binary's path. Arguments go to `cargo build`.
#
# A static build needs an explicit --target: with the host's own triple as an implicit target,
# crt-static would also apply to the proc-macro crates (clap's and serde's derives), which
# cannot be linked statically.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
cargo_home=${CARGO_HOME:-$HOME/.cargo}
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$PWD=/build"
export RUSTFLAGS
cargo build --release --target "$host" "$@" >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/$host/release/mailgate"
