#!/bin/sh
# Print the target triple that pkg/build.sh builds for; the one place that chooses it.
#
# x86_64-unknown-linux-musl when its standard library is installed (`rustup target add
# x86_64-unknown-linux-musl`): musl starts a process without glibc's probing of the CPU's
# caches through `cpuid`, which traps to the hypervisor on a virtual machine: with dlmalloc
# (Cargo.toml) half the time per message here (docs/PERFORMANCE.md, "musl"). Without it, the
# host's glibc target, linked statically as well: the same program, slower to start (the
# reason goes to stderr).
# MAILGATE_TARGET=TRIPLE chooses.
set -eu
host=$(rustc -vV | sed -n 's/^host: //p')
musl=x86_64-unknown-linux-musl
if [ -n "${MAILGATE_TARGET:-}" ]; then
    echo "$MAILGATE_TARGET"
elif [ "$host" = x86_64-unknown-linux-gnu ] &&
    ls "$(rustc --print target-libdir --target "$musl" 2>/dev/null)"/libstd-*.rlib >/dev/null 2>&1; then
    echo "$musl"
else
    echo "pkg/target.sh: the $musl target is not installed (rustup target add $musl): building for $host, static glibc, slower to start" >&2
    echo "$host"
fi
