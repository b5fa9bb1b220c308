"""`make bench-ab`: postwarden variants side by side on one private Postfix, interleaved.

For trying a change end to end before keeping it: each variant is this tree or a git revision
(checked out in a worktree), optionally with environment variables of its own, and runs as
its own milter process on its own socket and database; Postfix is switched from one to the
next between blasts (bench/run.py's set-up, messages and load). OpenDKIM runs beside them
unless --no-opendkim. Per blast: msg/s, the whole machine's busy share, the milter's CPU per
message and, from the variant's decision rows, the decision time's p50 and p99. Then the
median of each, and each variant's msg/s against OpenDKIM's or the first variant's. The CPU
column sums every process in the milter's process group, so a variant that forks worker
processes is charged for all of them.

On a shared 2-core machine one blast's msg/s varies by 20 % or more from the next: compare
medians over several repetitions, and CPU per message rather than msg/s for small changes.
bench/cpu.py measures the milter's own CPU without Postfix, with far less noise.

    bench/ab.py --variant main=. --variant before=HEAD~3 --reps 3
    bench/ab.py --variant main=. --variant nolog=. --env nolog:SOME_VAR=1 --sizes 4k
    bench/ab.py --variant python=. --variant libmilter=. --milter libmilter:transport=libmilter
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import run as B  # noqa: E402

SHAPES = {"4k": "4 KB", "100k": B.BIG}
WORKTREES = Path("/var/tmp/postwarden-ab")


class Variant:
    def __init__(self, name: str, rev: str, env: dict[str, str]) -> None:
        self.name, self.rev, self.env = name, rev, env
        self.milter: dict[str, str] = {}  # [milter] string keys of its own (--milter)
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket = Path()
        self.db = Path()

    def source(self) -> Path:
        if self.rev == ".":
            return REPO / "src"
        return B.check_out(self.rev, WORKTREES / self.name) / "src"

    def start(self, bench: B.Bench) -> None:
        home = B.ROOT / f"ab-{self.name}"
        home.mkdir()
        self.socket = bench.sb.socket_path.parent / f"ab-{self.name}.sock"
        self.db = home / "postwarden.db"
        etc = bench.config.parent
        config = (
            bench.config.read_text()
            .replace(str(bench.sb.socket_path), str(self.socket))
            .replace('policies = "policies"', f'policies = "{etc / "policies"}"')
            .replace('database = "postwarden.db"', f'database = "{self.db}"')
            .replace('pidfile = "postwarden.pid"', f'pidfile = "{home / "postwarden.pid"}"')
        )
        assert "[milter]\n" in config
        lines = "".join(f'{k} = "{v}"\n' for k, v in self.milter.items())
        config = config.replace("[milter]\n", f"[milter]\n{lines}", 1)
        (home / "postwarden.toml").write_text(config)
        env = {**os.environ, "PYTHONPATH": str(self.source()), **self.env}
        argv = [bench.sb.python, "-m", "postwarden", "--config", str(home / "postwarden.toml")]
        with (home / "log").open("wb") as log:
            self.proc = subprocess.Popen(
                [*argv, "milter"],
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ab: {self.name} did not start:\n{(home / 'log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        except ProcessLookupError:
            pass

    def last_id(self) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0])

    def durations(self, after: int) -> list[float]:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute(
                "SELECT duration_ms FROM decisions WHERE id > ? AND error = ''", [after]
            )
            return sorted(float(r[0]) for r in rows)


def group_cpu_ms(pgid: int) -> float:
    """CPU of every process in the group (a milter with worker processes)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid or stat.parent.name == str(pgid):
            total += (int(fields[11]) + int(fields[12])) * 1000 / B.TICKS
    return total


def switch(bench: B.Bench, socket: str) -> None:
    settings = [
        f"smtpd_milters = {socket}",
        f"non_smtpd_milters = {socket}",
        f"relayhost = [127.0.0.1]:{bench.fast_port}",
    ]
    subprocess.run(["postconf", "-c", str(bench.sb.conf_dir), "-e", *settings], check=True)
    subprocess.run(
        ["postfix", "-c", str(bench.sb.conf_dir), "reload"], check=True, capture_output=True
    )
    time.sleep(1.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME=REV",
        help="a postwarden to compare: REV a git revision, or . for this tree",
    )
    ap.add_argument(
        "--env", action="append", default=[], metavar="NAME:KEY=VALUE", help="for one variant"
    )
    ap.add_argument(
        "--milter",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="a [milter] string key for one variant (e.g. transport=libmilter)",
    )
    ap.add_argument("--no-opendkim", action="store_true")
    ap.add_argument("--sizes", default="4k,100k", help="comma-separated: 4k, 100k")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    args = ap.parse_args()
    variants: dict[str, Variant] = {}
    for spec in args.variant:
        name, _, rev = spec.partition("=")
        if (
            not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name)
            or not rev
            or name in (*variants, "OpenDKIM")
        ):
            ap.error(f"--variant {spec}: NAME=REV, NAME letters, digits, _ or - and each once")
        variants[name] = Variant(name, rev, {})
    for spec in args.env:
        name, _, pair = spec.partition(":")
        key, eq, value = pair.partition("=")
        if name not in variants or not key or not eq:
            ap.error(f"--env {spec}: NAME:KEY=VALUE for a NAME given with --variant")
        variants[name].env[key] = value
    for spec in args.milter:
        name, _, pair = spec.partition(":")
        key, eq, value = pair.partition("=")
        if name not in variants or not re.fullmatch(r"[a-z_]+", key) or not eq or '"' in value:
            ap.error(f"--milter {spec}: NAME:KEY=VALUE for a NAME given with --variant")
        variants[name].milter[key] = value
    if any(s not in SHAPES for s in args.sizes.split(",")) or args.reps < 1:
        ap.error("--sizes takes 4k and/or 100k, --reps at least 1")
    sizes = [SHAPES[s] for s in args.sizes.split(",")]

    bench = B.Bench()
    setups = ([] if args.no_opendkim else ["OpenDKIM"]) + list(variants)
    got: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        bench.start()
        for v in variants.values():
            v.start(bench)
        for rep in range(1, args.reps + 1):
            for size in sizes:
                for name in setups if rep % 2 else setups[::-1]:
                    v = variants.get(name)
                    if v is None:
                        assert bench.opendkim is not None
                        pid = bench.opendkim.pid
                        switch(bench, f"unix:{bench.opendkim_socket}")
                    else:
                        assert v.proc is not None
                        pid = v.proc.pid
                        switch(bench, f"unix:{v.socket}")
                        first = v.last_id()
                    cpu0, busy0 = group_cpu_ms(pid), B.busy_ticks()
                    seconds = bench.blast(bench.files[size], args.messages, args.sessions)
                    busy1 = B.busy_ticks()
                    row = {
                        "msg_s": args.messages / seconds,
                        "busy": (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1) * 100,
                        "cpu": (group_cpu_ms(pid) - cpu0) / args.messages,
                    }
                    if v is not None:
                        time.sleep(1)  # the writer commits
                        d = v.durations(first)
                        if d:
                            row["p50"] = d[len(d) // 2]
                            row["p99"] = d[min(len(d) - 1, int(len(d) * 0.99))]
                    got.setdefault((size, name), []).append(row)
                    print(
                        f"rep {rep} {size:>16} {name:<12}"
                        + "".join(f" {k} {val:.2f}" for k, val in row.items()),
                        flush=True,
                    )
        print("\nmedians")
        for size in sizes:
            base = statistics.median(r["msg_s"] for r in got[(size, setups[0])])
            for name in setups:
                rows = got[(size, name)]
                keys = dict.fromkeys(k for r in rows for k in r)
                med = {k: statistics.median(r[k] for r in rows if k in r) for k in keys}
                print(
                    f"{size:>16} {name:<12}"
                    + "".join(f" {k} {val:.2f}" for k, val in med.items())
                    + f"  / {setups[0]} {med['msg_s'] / base:.2f}"
                )
    finally:
        for v in variants.values():
            try:
                v.stop()
            except OSError as exc:
                print(f"ab: stopping {v.name}: {exc}", file=sys.stderr)
        bench.stop()
        for v in variants.values():
            if v.rev != ".":
                B.remove_worktree(WORKTREES / v.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
