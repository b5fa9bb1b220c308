"""`make bench-cpu`: the milter's own CPU per message, in one process, without Postfix.

The bench's messages (bench/run.py's 4 KB text/plain and 100 KB multipart with a base64
attachment) are driven through PostwardenMilter's callbacks as libmilter would call them
(connect, helo, MAIL FROM with a SASL login, RCPT, each header, body in 64 KB chunks, eom),
under bench/run.py's policy and config: RSA-2048 and Ed25519 signing, every cap checked and
counted in a real SQLite file, a decision row per message through the writer. The answer to
Postfix is recorded, not sent. Reports CPU ms per message (process time, both threads: the
writer's inserts count) for each shape, and with --profile the functions that cost most.

This is where the time of `make bench`'s milter CPU column goes, measured without the noise of
Postfix and the load generator sharing the cores: use it to find and check a speed-up, and
`make bench` to measure the whole.

With --against REV (a git revision), the same driver also runs that revision's postwarden
(its src/ from a worktree of REV) in alternating child processes, so this tree and REV are
compared side by side in one run; --write puts the table in docs/benchmarks.md.

Environment: BENCH_CPU_MESSAGES (2000), BENCH_CPU_REPS (5, with --against), BENCH_CPU_SORT
(tottime; or cumulative: --profile's order).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import CONFIG, POLICY, check_out, message, multipart, remove_worktree  # noqa: E402
from bench.sections import write_section  # noqa: E402
from tests.helpers import write_key  # noqa: E402

from postwarden.config.loader import load_config  # noqa: E402
from postwarden.milter import adapter  # noqa: E402
from postwarden.milter.daemon import Daemon  # noqa: E402

MESSAGES = int(os.environ.get("BENCH_CPU_MESSAGES", "2000"))
REPS = int(os.environ.get("BENCH_CPU_REPS", "5"))
ROOT = Path(os.environ.get("BENCH_CPU_ROOT", "/var/tmp/postwarden-bench-cpu"))
SHAPES = {"4k": "4 KB", "100k": "100 KB multipart"}


class Driven(adapter.PostwardenMilter):
    """The milter with libmilter's side recorded instead of sent."""

    macros: dict[str, str] = {}
    _protocol = 0  # no callback negotiated away: every @noreply returns its value

    def getsymval(self, name: str) -> str:
        return self.macros.get(name, "")

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        self.sent.append(("add", field))

    def chgheader(self, field: str, idx: int, value: str | None) -> None:
        self.sent.append(("chg", field))

    def replacebody(self, chunk: bytes) -> None:
        self.sent.append(("body", ""))

    def quarantine(self, reason: str) -> None:
        self.sent.append(("hold", reason))

    def setreply(self, rcode: str, xcode: str, *msg: str) -> None:
        self.sent.append(("reply", rcode))

    def delrcpt(self, rcpt: str) -> None:
        self.sent.append(("delrcpt", rcpt))

    sent: list[tuple[str, str]] = []


def split(raw: bytes) -> tuple[list[tuple[str, str]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    headers: list[tuple[str, str]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + "\n" + line.decode())
        else:
            name_b, _, value_b = line.partition(b":")
            headers.append((name_b.decode(), value_b.decode().lstrip()))
    return headers, body


def drive(m: Driven, raw: bytes, n: int) -> int:
    headers, body = split(raw)
    m.connect("client.example", 1, ("127.0.0.1", 40000))
    m.hello("client.example")
    results = 0
    for i in range(n):
        Driven.macros = {"{auth_authen}": "bench@example.com", "i": f"Q{i:010X}", "j": "mx"}
        Driven.sent = []
        m.envfrom("<bench@example.com>")
        m.envrcpt(f"<rcpt{i}@remote.test>")
        for name, value in headers:
            m.header(name, value)
        m.eoh()
        for k in range(0, len(body), 65536):
            m.body(body[k : k + 65536])
        rc = m.eom()
        if rc != adapter.ACCEPT or sum(1 for op, f in Driven.sent if f == "DKIM-Signature") != 2:
            raise SystemExit(f"message {i}: rc {rc}, told Postfix {Driven.sent}")
        results += 1
    m.close()
    return results


def drain(daemon: Daemon) -> None:
    """Until the writer has every row: its inserts are part of a message's cost."""
    while daemon.writer.depth:
        time.sleep(0.005)
    time.sleep(0.05)


def setup() -> Path:
    shutil.rmtree(ROOT, ignore_errors=True)
    etc = ROOT / "etc"
    (etc / "policies").mkdir(parents=True)
    rsa = write_key(etc / "keys" / "rsa2026.key")
    ed = write_key(etc / "keys" / "ed2026.key", algorithm="ed25519")
    (etc / "policies" / "10-bench.toml").write_text(
        POLICY.replace("{rsa}", str(rsa)).replace("{ed}", str(ed))
    )
    postfix = ROOT / "postfix"
    postfix.mkdir()
    config = etc / "postwarden.toml"
    config.write_text(CONFIG.format(socket=ROOT / "unused.sock", postfix=postfix))
    return config


def measure(shape: str, profile: bool, top: int) -> float:
    """CPU ms per message of this process's postwarden for one shape."""
    logging.disable(logging.CRITICAL)  # the log line is still built (readable(log_line(...)))
    daemon = Daemon(load_config(setup()))
    raw = message(4096) if shape == "4k" else multipart(102400)
    try:
        m = Driven(daemon.runtime)
        drive(m, raw, 50)  # warm: keys parsed, statements prepared
        drain(daemon)
        prof = cProfile.Profile() if profile else None
        cpu0 = time.process_time()
        if prof is not None:
            prof.enable()
        drive(m, raw, MESSAGES)
        drain(daemon)
        if prof is not None:
            prof.disable()
        cpu = time.process_time() - cpu0
        if prof is not None:
            out = io.StringIO()
            stats: Any = pstats.Stats(prof, stream=out)
            stats.sort_stats(os.environ.get("BENCH_CPU_SORT", "tottime")).print_stats(top)
            print(out.getvalue(), file=sys.stderr)
    finally:
        daemon.writer.flush_and_stop()
    return cpu * 1000 / MESSAGES


def child(src: Path | None, shape: str, root: Path) -> float:
    env = dict(os.environ, BENCH_CPU_ROOT=str(root))
    if src is not None:
        env["PYTHONPATH"] = str(src)
    res = subprocess.run(
        [sys.executable, __file__, "--shape", shape, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"bench/cpu.py child failed: {res.stdout}{res.stderr}")
    return float(json.loads(res.stdout.splitlines()[-1])["cpu_ms"])


def against(rev: str, shapes: list[str], write: bool) -> int:
    worktree = check_out(rev, Path("/var/tmp/postwarden-bench-cpu-against"))
    label = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %cs", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    started = time.monotonic()
    got: dict[tuple[str, str], list[float]] = {}
    try:
        for rep in range(REPS):
            for shape in shapes:
                # Alternating, and the order swapped every repetition: drift hits both alike.
                sides = [("this tree", None), (rev, worktree / "src")]
                for side, src in sides if rep % 2 == 0 else sides[::-1]:
                    ms = child(src, shape, ROOT / side.replace(" ", "-").replace("/", "-"))
                    got.setdefault((shape, side), []).append(ms)
                    print(
                        f"rep {rep + 1}/{REPS} {SHAPES[shape]} {side}: {ms:.3f} CPU ms/msg",
                        flush=True,
                    )
    finally:
        remove_worktree(worktree)
    took = time.monotonic() - started
    rows = []
    for shape in shapes:
        new = statistics.median(got[(shape, "this tree")])
        old = statistics.median(got[(shape, rev)])
        rows.append(f"| {SHAPES[shape]} | {old:.3f} | {new:.3f} | {new / old:.2f} |")
    load = os.getloadavg()[0]
    text = "\n".join(
        [
            "## The milter's own CPU per message (`make bench-cpu`)",
            "",
            f"Measured by `bench/cpu.py --against {rev}` on {datetime.now(UTC).date()}:"
            f" {os.cpu_count()} cores, Python {platform.python_version()}, load average"
            f" {load:.1f} at the end; {MESSAGES} messages a measurement, {REPS} alternating"
            f" repetitions, medians; {took / 60:.1f} minutes.",
            "The bench's messages driven through PostwardenMilter's callbacks in one process"
            " (no Postfix, no load generator): bench/run.py's policy, RSA-2048 and Ed25519"
            " signing, every cap counted in SQLite, a decision row each. CPU is the process's"
            " (the writer thread's inserts included). The earlier revision is"
            f" {label}, run from a worktree by the same driver.",
            "",
            f"| message | {rev} CPU ms/msg | this tree CPU ms/msg | ratio |",
            "|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    if write:
        write_section(REPO / "docs" / "benchmarks.md", "cpu", text)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="store_true", help="print the costliest functions")
    ap.add_argument("--shape", choices=["4k", "100k", "both"], default="both")
    ap.add_argument("--top", type=int, default=30, help="functions shown with --profile")
    ap.add_argument("--json", action="store_true", help="one shape's figure as JSON")
    ap.add_argument("--against", metavar="REV", help="compare with this git revision")
    ap.add_argument("--write", action="store_true", help="with --against: docs/benchmarks.md")
    args = ap.parse_args()
    shapes = ["4k", "100k"] if args.shape == "both" else [args.shape]
    if args.against:
        return against(args.against, shapes, args.write)
    for shape in shapes:
        ms = measure(shape, args.profile, args.top)
        if args.json:
            print(json.dumps({"shape": shape, "cpu_ms": ms}))
        else:
            print(f"{SHAPES[shape]}: {MESSAGES} messages, {ms:.3f} CPU ms/msg", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
