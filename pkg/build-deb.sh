#!/bin/sh
# Build the Debian package reproducibly: the same commit gives the same .deb, byte for byte,
# whatever the checkout's path, the day of the build or the builder's CARGO_HOME.
#   - SOURCE_DATE_EPOCH (the commit's time unless set): the archive's file times (cargo-deb
#     would use the day of the build);
#   - --remap-path-prefix: the paths of the checkout and of the dependencies' sources in
#     CARGO_HOME, which panic locations carry into the binary, become /build and /cargo.
# Arguments go to `cargo deb` (--output FILE, --deb-version V, …). tests/package.rs builds
# twice from two checkouts and compares the two files.
set -eu
cd "$(dirname "$0")/.."
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y Cargo.toml)
fi
export SOURCE_DATE_EPOCH
cargo_home=${CARGO_HOME:-$HOME/.cargo}
RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$PWD=/build"
export RUSTFLAGS
exec cargo deb "$@"
