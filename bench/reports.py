"""Benchmark: `postwarden reports ingest` of 1,000 DMARC aggregate reports (50 domains x 20
days, 20 rows each from a pool of 600 source addresses; a quarter each as .xml, .xml.gz, .zip
and as a report email), then `postwarden reports` over them, against a DNS server on loopback
that holds the DMARC records and reverse names. Writes its section of docs/benchmarks.md.
Run: make bench-reports (about a minute)."""

from __future__ import annotations

import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sections import write_section  # noqa: E402
from tests.dnsserver import LoopbackDNS, txt  # noqa: E402
from tests.helpers import write_config  # noqa: E402
from tests.reportdata import R, aggregate_xml, as_email, as_gzip, as_zip  # noqa: E402

DOMAINS = int(os.environ.get("BENCH_DOMAINS", "50"))
DAYS = int(os.environ.get("BENCH_DAYS", "20"))
ROWS = 20
POOL = 600
PIPE_RUNS = int(os.environ.get("BENCH_PIPE_RUNS", "30"))
SERVER = "192.0.2.25"


def ip(n: int) -> str:
    return f"198.51.{100 + n // 250}.{1 + n % 250}"


def reports(root: Path) -> list[Path]:
    rnd = random.Random(7)
    today = datetime.now(UTC).date()
    files = []
    for d in range(DOMAINS):
        domain = f"d{d:03d}.example"
        for day in range(1, DAYS + 1):
            date = today - timedelta(days=day)
            begin = int(datetime(date.year, date.month, date.day, tzinfo=UTC).timestamp())
            rows = [R(SERVER, rnd.randint(50, 500))]
            for _ in range(ROWS - 1):
                ok = rnd.random() < 0.8
                rows.append(
                    R(
                        ip(rnd.randrange(POOL)),
                        rnd.randint(1, 40),
                        dkim="pass" if ok else "fail",
                        spf="pass" if ok and rnd.random() < 0.5 else "fail",
                    )
                )
            xml = aggregate_xml("google.com", f"{domain}-{day}", domain, begin, begin + 86399, rows)
            n = len(files)
            name = f"r{n:04d}"
            path, data = [
                (root / f"{name}.xml", xml),
                (root / f"{name}.xml.gz", as_gzip(xml)),
                (root / f"{name}.zip", as_zip(xml, f"google.com!{domain}!{begin}.xml")),
                (root / f"{name}.eml", as_email(as_zip(xml), f"google.com!{domain}!{begin}.zip")),
            ][n % 4]
            path.write_bytes(data)
            files.append(path)
    return files


def run(cfg: Path, *args: str, stdin: bytes | None = None) -> tuple[float, str]:
    started = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(cfg), *args],
        input=stdin,
        capture_output=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if res.returncode != 0:
        raise SystemExit(
            f"postwarden {' '.join(args[:2])} exited {res.returncode}: {res.stderr[-2000:]!r}"
        )
    return elapsed, res.stdout.decode()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        policy = "".join(f'[domains."d{d:03d}.example"]\n' for d in range(DOMAINS))
        cfg = write_config(root, policy)
        zone = [
            txt(f"_dmarc.d{d:03d}.example.", f"v=DMARC1; p=none; rua=mailto:r@d{d:03d}.example")
            for d in range(DOMAINS)
        ]
        for n in range(0, POOL, 2):  # half the sources have a reverse name
            a, b, c, e = ip(n).split(".")
            zone.append(f"{e}.{c}.{b}.{a}.in-addr.arpa. 300 IN PTR host{n}.sender.example.")
        files = reports(root / "in")
        size = sum(p.stat().st_size for p in files)
        with LoopbackDNS("\n".join(zone) + "\n") as dns:
            cfg.write_text(
                cfg.read_text()
                + f'[server]\nhostname = "mail.example.net"\naddresses = ["{SERVER}"]\n'
                + f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = 2.0\n'
            )
            run(cfg, "db", "migrate")
            # As the pipe service runs it: one process per report email, on stdin.
            emails = [p for p in files if p.suffix == ".eml"][:PIPE_RUNS]
            pipe = [run(cfg, "reports", "ingest", stdin=p.read_bytes())[0] for p in emails]
            batch, out = run(cfg, "reports", "ingest", *map(str, files))
            stored = out.count("stored: ") - out.count("already stored: ")
            again, out2 = run(cfg, "reports", "ingest", *map(str, files[:100]))
            assert out2.count("already stored") == 100, "duplicates were stored again"
            first, text = run(cfg, "reports", "--json")
            second, _ = run(cfg, "reports", "--json")
            one, _ = run(cfg, "reports", "--domain", "d000.example", "--json")
        db_size = (root / "postwarden.db").stat().st_size
    rows = len(files) * ROWS
    per_report = batch / len(files) * 1000
    lines = [
        "## Reports (`make bench-reports`)",
        "",
        f"Measured on {datetime.now(UTC):%Y-%m-%d}: {os.cpu_count()} cores, Python {platform.python_version()},"
        f" shared machine (load average {os.getloadavg()[0]:.1f} at the end). {len(files):,} DMARC aggregate reports ({DOMAINS} domains x {DAYS} days,"
        f" {ROWS} rows each, {rows:,} rows, {POOL} source addresses; a quarter each as .xml, .xml.gz,"
        f" .zip and report email; {size / 1e6:.1f} MB), a DNS server on loopback with the DMARC"
        " records and half the reverse names.",
        "",
        "| step | time |",
        "|---|---|",
        f"| `reports ingest` of all {len(files):,} files in one process | {batch:.2f} s ({per_report:.1f} ms a report; {stored} stored, {PIPE_RUNS} already there) |",
        f"| `reports ingest` of one report email on stdin, as the pipe service runs it (median of {PIPE_RUNS}) | {statistics.median(pipe) * 1000:.0f} ms (process start included) |",
        f"| `reports ingest` of 100 already stored | {again:.2f} s (all 100 recognised) |",
        f"| `reports --json`, all {DOMAINS} domains, first run (reverse names asked) | {first:.2f} s |",
        f"| `reports --json` again (reverse names cached) | {second:.2f} s |",
        f"| `reports --domain d000.example --json` | {one:.2f} s |",
        "",
        f"The database holds the {len(files):,} raw reports gzipped: {db_size / 1e6:.1f} MB in all.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    write_section(REPO / "docs" / "benchmarks.md", "reports", section)
    print(f"summary of {len(text):,} bytes of JSON; written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
