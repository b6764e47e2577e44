#!/usr/bin/env bash
# install.sh: mailgate from source. Builds the Debian package (pkg/build-deb.sh: the static
# binary, then cargo deb) and installs it with apt, then sets up what was asked for
# (--with-postfix, --php, --as-sendmail) with the same pkg/mailgate-chain the package ships
# as /usr/sbin/mailgate-chain: one way things get installed.
#
# --binary PATH or --prefix DIR install without the package (development, tests, packaging
# into a directory): pkg/mailgate-chain then installs the binary, configuration, state directory
# and queue runner itself. `./install.sh --help` lists every option.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
chain=$here/pkg/mailgate-chain
export MAILGATE_CHAIN_NAME=install.sh

without_package=0 uninstall=0 dry_run=0
for arg in "$@"; do
    case "$arg" in
        --binary|--prefix) without_package=1 ;;
        --uninstall|--undo) uninstall=1 ;;
        --dry-run) dry_run=1 ;;
        -h|--help) exec "$chain" --help ;;
    esac
done
[ -z "${DESTDIR:-}" ] || without_package=1

installed_package() { dpkg-query -W -f='${Status}' mailgate 2>/dev/null | grep -q 'ok installed'; }

if [ $without_package = 1 ]; then
    exec "$chain" "$@"
fi
if [ "$(id -u)" != 0 ] && [ $dry_run = 0 ]; then
    echo "install.sh: must run as root (it installs a package and system config); nothing was changed" >&2
    exit 77
fi

if [ $uninstall = 1 ]; then
    # What the chain set up first (it restores Postfix and PHP), then the package; `remove`
    # keeps /etc/mailgate and /var/lib/mailgate, as --uninstall always did.
    "$chain" "$@"
    if installed_package; then
        if [ $dry_run = 1 ]; then
            echo "would run: apt-get remove -y mailgate"
        else
            DEBIAN_FRONTEND=noninteractive apt-get remove -y -q mailgate
        fi
    fi
    exit 0
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n1)
deb=$here/target/debian/mailgate_${version}-1_amd64.deb
if [ $dry_run = 1 ]; then
    echo "would run: pkg/build-deb.sh (in $here), apt-get install $deb"
    export MAILGATE_CHAIN_PACKAGED=1
else
    command -v cargo-deb >/dev/null || (cd "$here" && cargo install --locked cargo-deb)
    "$here/pkg/build-deb.sh" --output "$deb" >/dev/null
    # Postfix comes as the package's dependency: unconfigured, as mailgate-chain sets it up
    # (Debian's default would be an Internet site listening on port 25).
    if ! dpkg -s postfix >/dev/null 2>&1; then
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb"
fi
exec "$chain" "$@"
