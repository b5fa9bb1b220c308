"""`make bench-metrics`: does scraping /metrics during a 20-session load move decision time?

One private Postfix, postwarden with [metrics].listen on loopback and the bench's policy (caps
raised for the load generator, every cap checked, every message counted, RSA and Ed25519
signing). Each repetition blasts BENCH_MESSAGES 4 KB messages over BENCH_SESSIONS sessions with
smtp-source once per condition, interleaved: nobody scraping, then a scraper asking for
/metrics every 1 s, then every 0.1 s (BENCH_SCRAPE_S; Prometheus's default is 15 s), and the
decision time of each message is read from its decision row (duration_ms: end-of-message to
the plan applied). The median over repetitions of each condition's p50 and p99 is written to
docs/benchmarks.md, in its own section; nothing here asserts a speed.

Environment: BENCH_REPS (6), BENCH_MESSAGES (2000), BENCH_SESSIONS (20), BENCH_SCRAPE_S (1,0.1).
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import run as base  # noqa: E402  (bench/run.py: its policy, config and message)
from tests.helpers import write_key  # noqa: E402

from postwarden.sandbox import Sandbox, free_port  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "6"))
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "2000"))
SESSIONS = int(os.environ.get("BENCH_SESSIONS", "20"))
# Seconds between scrapes, one condition each: 1 s (15 times Prometheus's default rate) and
# 0.1 s (a scrape storm, 150 times).
SCRAPE_S = [float(x) for x in os.environ.get("BENCH_SCRAPE_S", "1,0.1").split(",")]
ROOT = Path("/var/lib/postwarden-bench-metrics")
SECTION = "## Scraping /metrics under load"


def say(text: str) -> None:
    print(text, flush=True)


class Scraper(threading.Thread):
    def __init__(self, url: str, every: float) -> None:
        super().__init__(daemon=True)
        self.url, self.every = url, every
        self.stop = threading.Event()
        self.scrapes = 0
        self.seconds: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as r:
                r.read()
            self.seconds.append(time.perf_counter() - t0)
            self.scrapes += 1
            self.stop.wait(self.every)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


class MetricsBench:
    def __init__(self) -> None:
        subprocess.run(["rm", "-rf", str(ROOT)], check=True)
        self.sb = Sandbox(ROOT / "sandbox")
        self.sb.configure()
        etc = ROOT / "etc"
        (etc / "policies").mkdir(parents=True)
        rsa = write_key(etc / "keys" / "rsa2026.key")
        ed = write_key(etc / "keys" / "ed2026.key", algorithm="ed25519")
        (etc / "policies" / "10-bench.toml").write_text(
            base.POLICY.replace("{rsa}", str(rsa)).replace("{ed}", str(ed))
        )
        self.port = free_port()
        self.config = etc / "postwarden.toml"
        self.config.write_text(
            base.CONFIG.format(socket=self.sb.socket_path, postfix=self.sb.conf_dir)
            + f'[metrics]\nlisten = "127.0.0.1:{self.port}"\n'
        )
        self.db = etc / "postwarden.db"
        self.file = ROOT / "msg-4096.eml"
        self.file.write_bytes(base.message(4096))

    def start(self) -> None:
        self.sb.start_sink()
        self.sb.start_postfix()
        self.sb.start_milter(self.config)
        subprocess.run(
            [
                "postconf",
                "-c",
                str(self.sb.conf_dir),
                "-e",
                f"smtpd_milters = {self.sb.milter_socket}",
                f"non_smtpd_milters = {self.sb.milter_socket}",
            ],
            check=True,
        )
        subprocess.run(
            ["postfix", "-c", str(self.sb.conf_dir), "reload"], check=True, capture_output=True
        )
        time.sleep(1.5)

    def stop(self) -> None:
        self.sb.stop_all()

    def max_id(self) -> int:
        conn = sqlite3.connect(self.db)
        try:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM decisions").fetchone()[0])
        finally:
            conn.close()

    def blast(self) -> list[float]:
        """One load: the decision times (ms) of its messages."""
        start = self.max_id()
        subprocess.run(
            [
                "smtp-source",
                "-s",
                str(SESSIONS),
                "-m",
                str(MESSAGES),
                "-F",
                str(self.file),
                "-f",
                "bench@example.com",
                "-t",
                "rcpt@remote.test",
                f"127.0.0.1:{self.sb.smtp_port}",
            ],
            check=True,
            timeout=1800,
        )
        deadline = time.monotonic() + 120
        while self.max_id() - start < MESSAGES and time.monotonic() < deadline:
            time.sleep(0.2)
        conn = sqlite3.connect(self.db)
        try:
            values = [
                float(r[0])
                for r in conn.execute("SELECT duration_ms FROM decisions WHERE id > ?", [start])
            ]
        finally:
            conn.close()
        if len(values) != MESSAGES:
            raise SystemExit(f"bench-metrics: {len(values)} decisions of {MESSAGES}")
        return values

    def run(self) -> dict[str, dict[str, float]]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read().decode()
        if "postwarden_decisions_total" not in body:
            raise SystemExit("bench-metrics: the endpoint does not serve postwarden's metrics")
        self.blast()  # warm-up: first connections, first pages of the database
        every = {"not scraped": 0.0, **{f"scraped every {x:g} s": x for x in SCRAPE_S}}
        results: dict[str, list[dict[str, float]]] = {cond: [] for cond in every}
        conds = list(results)
        for rep in range(1, REPS + 1):
            # Each repetition starts with another condition: the machine drifts over a run,
            # and a fixed order would hand all of the drift to the last condition.
            shift = (rep - 1) % len(conds)
            for cond in conds[shift:] + conds[:shift]:
                scraper = Scraper(url, every[cond]) if every[cond] else None
                if scraper:
                    scraper.start()
                t0 = time.monotonic()
                values = self.blast()
                took = time.monotonic() - t0
                if scraper:
                    scraper.stop.set()
                    scraper.join(30)
                row = {
                    "p50": percentile(values, 0.50),
                    "p99": percentile(values, 0.99),
                    "seconds": took,
                    "scrapes": float(scraper.scrapes if scraper else 0),
                    "scrape_ms": 1000 * statistics.median(scraper.seconds) if scraper else 0.0,
                }
                results[cond].append(row)
                say(
                    f"  rep {rep}  {cond:<22}  p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms"
                    + (f"  {scraper.scrapes} scrapes" if scraper else "")
                )
        out = {}
        for cond, rows in results.items():
            out[cond] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            out[cond]["p99_min"] = min(r["p99"] for r in rows)
            out[cond]["p99_max"] = max(r["p99"] for r in rows)
        return out


def section(summary: dict[str, dict[str, float]], took: float) -> str:
    quiet = summary["not scraped"]
    changes = [
        f"{cond}: {(r['p99'] - quiet['p99']) / quiet['p99'] * 100:+.1f} %"
        for cond, r in summary.items()
        if cond != "not scraped"
    ]
    return "\n".join(
        [
            SECTION,
            "",
            f"Measured by `make bench-metrics` on {datetime.now(UTC):%Y-%m-%d}: {base.machine()}.",
            f"{MESSAGES} messages of 4 KB over {SESSIONS} concurrent sessions (smtp-source), {REPS}"
            " interleaved repetitions of each condition, each repetition starting with another"
            " condition; decision time is each message's"
            " duration_ms (end-of-message to the plan applied) from its decision row. Prometheus"
            " scrapes every 15 s by default; here a scraper asks for /metrics every"
            f" {' s, or every '.join(f'{x:g}' for x in SCRAPE_S)} s. postqueue and the database"
            " are read at most once per 15 s whatever the rate (the collector's cache). The whole"
            f" run took {took / 60:.1f} minutes.",
            "",
            "| condition | decision p50 ms | decision p99 ms | p99 min - max over the repetitions |"
            " load took s | scrapes | scrape ms (median) |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {cond} | {r['p50']:.2f} | {r['p99']:.2f} | {r['p99_min']:.0f} - {r['p99_max']:.0f} |"
                f" {r['seconds']:.1f} | {r['scrapes']:.0f} | {r['scrape_ms']:.2f} |"
                for cond, r in summary.items()
            ),
            "",
            "Change in the decision time's p99 against no scraping (medians over the"
            f" repetitions): {'; '.join(changes)}. The machine's load average was"
            f" {LOAD[0]:.1f} when the run began and {os.getloadavg()[0]:.1f} when it ended (2"
            " cores, shared): compare a change with the spread of one condition's p99 over its"
            " repetitions before reading anything into it.",
            "",
        ]
    )


LOAD = os.getloadavg()


def main() -> int:
    started = time.monotonic()
    bench = MetricsBench()
    try:
        bench.start()
        say(
            f"bench-metrics: {REPS} reps x {1 + len(SCRAPE_S)} conditions, {MESSAGES} messages,"
            f" {SESSIONS} sessions"
        )
        summary = bench.run()
    finally:
        bench.stop()
    text = section(summary, time.monotonic() - started)
    # Our section only, kept by name when the other benchmarks rewrite the file (sections.py).
    from sections import write_section

    write_section(REPO / "docs" / "benchmarks.md", "metrics", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
