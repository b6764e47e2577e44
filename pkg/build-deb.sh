#!/bin/sh
# Build the Debian package reproducibly: the same commit gives the same .deb, byte for byte,
# whatever the checkout's path, the day of the build or the builder's CARGO_HOME.
#   - the binary comes from pkg/build.sh (static, paths remapped);
#   - SOURCE_DATE_EPOCH (the commit's time unless set): the archive's file times (cargo-deb
#     would use the day of the build).
# Arguments go to `cargo deb` (--output FILE, --deb-version V, …). tests/package.rs builds
# twice from two checkouts and compares the two files.
set -eu
cd "$(dirname "$0")/.."
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || stat -c %Y Cargo.toml)
fi
export SOURCE_DATE_EPOCH
pkg/build.sh --quiet >/dev/null
exec cargo deb --no-build --target "$(pkg/target.sh 2>/dev/null)" "$@"
