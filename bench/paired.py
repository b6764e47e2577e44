#!/usr/bin/env python3
"""Paired whole-process timing: every round runs each command once, in a shuffled order, so
that the machine's drift (a shared VM's noise is larger than the differences measured here)
falls on all of them alike. Each run is posix_spawn + wait4: wall time and the child's CPU
time, no shell in between. stdin comes from a file (or /dev/null), stdout and stderr go to
/dev/null.

    bench/paired.py [--runs N] [--warmup N] [--stdin FILE] [--env K=V ...]
                    [--env-for NAME K=V ...] [--settle DIR ...] NAME=COMMAND ...

--env-for NAME K=V: K=V for command NAME only (mailgate reads its configuration from the
environment, never from a path in argv).

--settle DIR: after every run, wait (up to 10 s) until DIR holds no file, before the next
command starts. Postfix's sendmail returns when the message is in the maildrop; pickup,
cleanup, qmgr and smtp then work on it in the background, and without settling that work
lands on whichever command runs next in the round (two runs here on 2 cores: mailgate's
accepted median 1.785 ms without settling, 1.649 ms with). Settling charges each command only
its own process.

Prints one JSON object: per name the median wall and CPU milliseconds with min and max, and
per name after the first the median, min and max of its per-round ratio to the first
(`ratio_to_first`): the paired figure the README's tables quote.
"""
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import time


def main():
    args = sys.argv[1:]
    runs, warmup, stdin, env = 300, 20, "/dev/null", dict(os.environ)
    commands = []
    settle = []
    env_for = {}
    while args:
        a = args.pop(0)
        if a == "--runs":
            runs = int(args.pop(0))
        elif a == "--warmup":
            warmup = int(args.pop(0))
        elif a == "--stdin":
            stdin = args.pop(0)
        elif a == "--env-for":
            name = args.pop(0)
            k, _, v = args.pop(0).partition("=")
            env_for.setdefault(name, {})[k] = v
        elif a == "--settle":
            settle.append(args.pop(0))
        elif a == "--env":
            k, _, v = args.pop(0).partition("=")
            env[k] = v
        else:
            name, _, command = a.partition("=")
            argv = shlex.split(command)
            argv[0] = shutil.which(argv[0]) or argv[0]
            commands.append((name, argv))
    if len(commands) < 1:
        sys.exit("usage: paired.py [--runs N] [--warmup N] [--stdin FILE] NAME=COMMAND ...")

    devnull = os.open("/dev/null", os.O_WRONLY)

    def quiet():
        deadline = time.monotonic() + 10
        while any(os.listdir(d) for d in settle):
            if time.monotonic() > deadline:
                sys.exit(f"paired.py: {settle} not empty after 10 s")
            time.sleep(0.0005)

    def once(name, argv):
        fd = os.open(stdin, os.O_RDONLY)
        actions = [
            (os.POSIX_SPAWN_DUP2, fd, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ]
        start = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, {**env, **env_for.get(name, {})}, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
        wall = (time.perf_counter_ns() - start) / 1e6
        os.close(fd)
        if not os.WIFEXITED(status):
            sys.exit(f"paired.py: {argv[0]} died: status {status}")
        quiet()
        return wall, (usage.ru_utime + usage.ru_stime) * 1000

    for _ in range(warmup):
        for name, argv in commands:
            once(name, argv)
    wall = {n: [] for n, _ in commands}
    cpu = {n: [] for n, _ in commands}
    ratios = {n: [] for n, _ in commands[1:]}
    first = commands[0][0]
    for _ in range(runs):
        order = list(commands)
        random.shuffle(order)
        this = {}
        for name, argv in order:
            w, c = once(name, argv)
            wall[name].append(w)
            cpu[name].append(c)
            this[name] = w
        for name, _ in commands[1:]:
            ratios[name].append(this[first] / this[name])

    def summary(xs):
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}

    out = {
        name: {"wall_ms": summary(wall[name]), "cpu_ms": summary(cpu[name])}
        for name, _ in commands
    }
    for name, _ in commands[1:]:
        # quartiles of the per-round ratio: the spread a reader should believe
        q = statistics.quantiles(ratios[name], n=4)
        out[name]["ratio_to_first"] = {
            "median": statistics.median(ratios[name]),
            "q1": q[0],
            "q3": q[2],
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
