#!/usr/bin/env bash
# The Redis store's ways in, in one run: a plain redis:// URL, Redis Sentinel (a master, a
# replica and three sentinels; the master asked of the sentinels at each message), and
# rediss:// (TLS with a test CA, an ACL user) — an accepted message (relayed to smtp-sink) and a
# refused one (account over its limit) each, paired (bench/paired.py), with the file store
# beside them. Prints a Markdown section. Needs redis-server, redis-sentinel, openssl,
# smtp-sink; starts everything on free loopback ports and stops it again.
#
#   bench/store.sh            # bench/run.sh calls it unless STORE=0
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-200}
for tool in redis-server redis-sentinel redis-cli openssl smtp-sink python3; do
    command -v "$tool" >/dev/null || { echo "bench/store.sh: $tool is missing" >&2; exit 1; }
done
BIN=$(pkg/build.sh --quiet)   # the shipped binary: static, release
# shellcheck source=bench/lib.sh
. bench/lib.sh
scratch_dir store-bench
start_sink

redis() { # port args...
    redis-server --bind 127.0.0.1 --port "$1" --save "" --appendonly no --dir "$work" "${@:2}" >/dev/null 2>&1 &
    pids+=($!)
}
plain=$(free_port); redis "$plain"
master=$(free_port); redis "$master"
replica=$(free_port); redis "$replica" --replicaof 127.0.0.1 "$master"
for p in "$plain" "$master" "$replica"; do wait_port "$p"; done
sentinels=()
for i in 1 2 3; do
    port=$(free_port)
    printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor bench 127.0.0.1 %s 2\n' "$port" "$work" "$master" >"$work/sentinel$i.conf"
    redis-sentinel "$work/sentinel$i.conf" >/dev/null 2>&1 &
    pids+=($!)
    sentinels+=("\"127.0.0.1:$port\"")
    wait_port "$port"
done

# TLS: a test CA and a certificate for 127.0.0.1; an ACL user with README's line.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
echo "subjectAltName = IP:127.0.0.1" >"$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null
tls=$(free_port)
redis 0 --tls-port "$tls" --tls-cert-file "$work/server.pem" --tls-key-file "$work/server.key" \
    --tls-ca-cert-file "$work/ca.pem" --tls-auth-clients no
wait_port "$tls"
for _ in $(seq 100); do
    redis-cli --tls --cacert "$work/ca.pem" -p "$tls" acl setuser mailgate on '>bench-pass' '~mailgate:*' resetchannels \
        -@all +@scripting +hgetall +hget +hset +get +set +del +exists +expire +scan +ping +role +time >/dev/null 2>&1 && break
    sleep 0.05
done
echo "bench-pass" >"$work/redis.pass"

python3 - "$work" <<'PY'
import sys
hdr = ("To: Customer <customer@example.net>\nSubject: Your order #4711 at shop.example.org\n"
       "From: Shop <shop@example.org>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n\n")
line = "Thank you for your order. We will ship it as soon as possible, usually within 24 hours.\n"
open(f"{sys.argv[1]}/small.eml", "w").write(hdr + line * (4096 // len(line)))
PY

mkconf() { # name limit store-keys
    mkdir -p "$work/$1/state"
    cat >"$work/$1/mailgate.toml" <<TOML
origin = "example.org"
hostname = "bench.example.org"
state_dir = "$work/$1/state"
[relay]
port = $SINK_PORT
trusted_owners = ["root", "nobody"]
[log]
file = "$work/$1/mailgate.log"
[alerts]
admin = ""
[defaults]
limits = [ { window = "1h", messages = $2 } ]
[accounts.root]
exempt = false
$3
TOML
}
store_keys() { # kind
    case $1 in
        files) echo "" ;;
        plain) printf '[store]\nkind = "redis"\nurl = "redis://127.0.0.1:%s/0"\n' "$plain" ;;
        sentinel) printf '[store]\nkind = "redis"\nsentinels = [%s]\nmaster_name = "bench"\n' "$(IFS=,; echo "${sentinels[*]}")" ;;
        tls) printf '[store]\nkind = "redis"\nurl = "rediss://127.0.0.1:%s/0"\nusername = "mailgate"\npassword_file = "%s"\ntls_ca_file = "%s"\n' \
            "$tls" "$work/redis.pass" "$work/ca.pem" ;;
    esac
}
for kind in files plain sentinel tls; do
    mkconf "acc-$kind" 100000000 "$(store_keys "$kind")"
    mkconf "ref-$kind" 1 "$(store_keys "$kind")"
    MAILGATE_CONFIG=$work/ref-$kind/mailgate.toml "$BIN" -i customer@example.net </dev/null 2>/dev/null || true   # uses up its one
    MAILGATE_CONFIG=$work/acc-$kind/mailgate.toml "$BIN" check-config >/dev/null || {
        echo "bench/store.sh: the $kind store does not check out:" >&2
        MAILGATE_CONFIG=$work/acc-$kind/mailgate.toml "$BIN" check-config >&2; exit 1; }
done

echo "bench/store.sh: accepted and refused through each store ($RUNS paired rounds)..." >&2
args=()
for kind in files plain sentinel tls; do
    args+=("acc-$kind=$BIN --config $work/acc-$kind/mailgate.toml -t -i")
done
python3 bench/paired.py --runs "$RUNS" --stdin "$work/small.eml" "${args[@]}" >"$work/acc.json"
args=()
for kind in files plain sentinel tls; do
    args+=("ref-$kind=$BIN --config $work/ref-$kind/mailgate.toml -i customer@example.net")
done
python3 bench/paired.py --runs "$RUNS" "${args[@]}" >"$work/ref.json"

python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
acc = json.load(open(f"{w}/acc.json")); ref = json.load(open(f"{w}/ref.json"))
names = {"files": "file store", "plain": "Redis, redis://", "sentinel": "Redis through 3 sentinels",
         "tls": "Redis, rediss:// + ACL user"}
print("\n### The counter store's ways in (paired medians; ratio to the plain URL)\n")
print("| store | accepted, 4 KiB | refused |")
print("|---|---|---|")
pa = acc["acc-plain"]["wall_ms"]["median"]; pr = ref["ref-plain"]["wall_ms"]["median"]
for k, name in names.items():
    a = acc[f"acc-{k}"]["wall_ms"]["median"]; r = ref[f"ref-{k}"]["wall_ms"]["median"]
    print(f"| {name} | {a:.3f} ms ({a/pa:.2f}x) | {r:.3f} ms ({r/pr:.2f}x) |")
PY
