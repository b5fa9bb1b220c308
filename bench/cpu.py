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

Environment: BENCH_CPU_MESSAGES (2000).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import CONFIG, POLICY, message, multipart  # noqa: E402
from tests.helpers import write_key  # noqa: E402

from postwarden.config.loader import load_config  # noqa: E402
from postwarden.milter import adapter  # noqa: E402
from postwarden.milter.daemon import Daemon  # noqa: E402

MESSAGES = int(os.environ.get("BENCH_CPU_MESSAGES", "2000"))
ROOT = Path("/var/tmp/postwarden-bench-cpu")


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="store_true", help="print the costliest functions")
    ap.add_argument("--shape", choices=["4k", "100k", "both"], default="both")
    ap.add_argument("--top", type=int, default=30, help="functions shown with --profile")
    args = ap.parse_args()
    logging.disable(logging.CRITICAL)  # the log line is still built (readable(log_line(...)))
    daemon = Daemon(load_config(setup()))
    shapes = {"4 KB": message(4096), "100 KB multipart": multipart(102400)}
    if args.shape != "both":
        shapes = {k: v for k, v in shapes.items() if k.startswith(args.shape[:-1])}
    try:
        for name, raw in shapes.items():
            m = Driven(daemon.runtime)
            drive(m, raw, 50)  # warm: keys parsed, statements prepared
            drain(daemon)
            prof = cProfile.Profile() if args.profile else None
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if prof is not None:
                prof.enable()
            drive(m, raw, MESSAGES)
            drain(daemon)
            if prof is not None:
                prof.disable()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            print(
                f"{name}: {MESSAGES} messages, {cpu * 1000 / MESSAGES:.3f} CPU ms/msg"
                f" ({wall * 1000 / MESSAGES:.3f} wall ms/msg)",
                flush=True,
            )
            if prof is not None:
                out = io.StringIO()
                stats: Any = pstats.Stats(prof, stream=out)
                stats.sort_stats("tottime").print_stats(args.top)
                print(out.getvalue())
    finally:
        daemon.writer.flush_and_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
