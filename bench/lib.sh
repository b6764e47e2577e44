# shellcheck shell=bash
# Shared by the bench scripts and pkg/hot-symbols.sh (sourced): a scratch directory, free
# loopback ports, waiting for a listener, a sink, and reading hyperfine's medians. The caller
# keeps the pids it must kill in the array `pids`.

# A scratch directory in $work (readable by the sink's user), removed on exit with every
# process whose pid the caller put into `pids`.
scratch_dir() { # name
    work=$(mktemp -d "/tmp/mailgate-$1.XXXXXX")
    chmod 755 "$work"
    pids=()
    trap scratch_cleanup EXIT
}
scratch_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "bench: nothing listens on port $1" >&2; exit 1
}

# Postfix's smtp-sink on a free port, as nobody; sets SINK_PORT.
start_sink() {
    SINK_PORT=$(free_port)
    smtp-sink -u nobody "127.0.0.1:$SINK_PORT" 256 >/dev/null 2>&1 &
    pids+=($!)
    wait_port "$SINK_PORT"
}

# The medians (ms) of a hyperfine JSON export, one per command.
median_ms() { python3 -c "import json,sys; r=json.load(open('$1'))['results']; print(' '.join('%.3f' % (x['median']*1000) for x in r))"; }

ratio() { python3 -c "print('%.2f' % ($1/$2))"; }
