"""The TUI over a big database: `make bench-tui`.

Seeds 1,000,000 decision rows (tests/tui/seed.py's rows, varied) and a hold queue of 100,000
messages joined to their decisions, then drives the app headless through Textual's Pilot and
prints, in one run:
  - decisions: time to first paint, to the next page, to a filtered page;
  - quarantine: time until 100,000 held messages are listed, and to the next page;
  - the worst stall of the UI's event loop while each of those ran (a 5 ms ticker's largest
    lateness): the work is in worker threads, so this stays small if the UI never blocks.
Writes docs/tui-benchmark.md. Times are wall-clock on a shared machine: read them as orders of
magnitude, not as goals.
"""

from __future__ import annotations

import asyncio
import platform
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tui.seed import FROZEN, SeededBackend, decision, seed
from textual.pilot import Pilot
from textual.widgets import Static

from postwarden.quarantine import Held
from postwarden.store import open_db
from postwarden.tui.app import PostwardenApp

ROOT = Path("/var/tmp/postwarden-bench-tui")
ROWS = 1_000_000
HELD = 100_000
REPORT = Path(__file__).resolve().parents[1] / "docs" / "tui-benchmark.md"


class BigHoldBackend(SeededBackend):
    def held(self) -> list[Held]:
        with self.lock:
            ids = [
                r[0]
                for r in self.db.execute(
                    "SELECT queue_id FROM decisions WHERE action = 'quarantine' ORDER BY id DESC LIMIT ?",
                    [HELD],
                ).fetchall()
            ]
        messages = [
            Held(q, int(FROZEN.timestamp()) - i, "mallory@example.com", ["x@gmail.example"], 2100)
            for i, q in enumerate(ids)
        ]
        from postwarden.quarantine import with_decisions

        with self.lock:
            return with_decisions(self.db, messages)


def build() -> Path:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    cfg = seed(ROOT, decisions=0)
    db = open_db(ROOT / "postwarden.db")
    started = time.monotonic()
    templates = [decision(i, FROZEN) for i in range(56)]
    cols = list(templates[0])
    qi, ti = cols.index("queue_id"), cols.index("time")

    def rows() -> Any:
        for i in range(ROWS):
            row = list(templates[i % 56].values())
            row[qi] = f"B{i:09X}"
            row[ti] = (FROZEN - timedelta(seconds=(ROWS - i) // 10)).isoformat()
            yield row

    with db.conn:
        db.conn.executemany(
            f"INSERT INTO decisions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            rows(),
        )
    db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    held = db.execute("SELECT COUNT(*) FROM decisions WHERE action = 'quarantine'").fetchone()[0]
    print(f"seeded {ROWS:,} decisions ({held:,} quarantined) in {time.monotonic() - started:.1f}s")
    db.conn.close()
    return cfg


class Stall:
    """The event loop's worst lateness over a 5 ms ticker: how long the UI could not react."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, time.perf_counter() - t - 0.005)

    def __enter__(self) -> Stall:
        self.task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


async def until(pilot: Pilot[Any], predicate: Any, timeout: float = 600) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout:
            raise TimeoutError
        await pilot.pause(0.001)
    return time.perf_counter() - started


def status(app: PostwardenApp) -> str:
    return str(app.screen.query_one("#status", Static).render())


async def drive(cfg: Path) -> list[tuple[str, float, float]]:
    results = []
    opened = time.perf_counter()
    app = PostwardenApp(BigHoldBackend(cfg, now=lambda: FROZEN), poll_interval=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        with Stall() as stall:
            await until(pilot, lambda: status(app).startswith("page 1"))
            await pilot.pause()
        results.append(
            ("decisions: first paint (from app start)", time.perf_counter() - opened, stall.worst)
        )
        with Stall() as stall:
            t0 = time.perf_counter()
            await pilot.press("right_square_bracket")
            await until(pilot, lambda: status(app).startswith("page 2"))
            t = time.perf_counter() - t0
        results.append(("decisions: next page", t, stall.worst))
        with Stall() as stall:
            await pilot.press("slash", *"reason:bulk.no_one_click")
            t0 = time.perf_counter()
            await pilot.press("enter")
            await until(pilot, lambda: "filter: reason:" in status(app))
            t = time.perf_counter() - t0
        results.append(("decisions: filtered by reason, first page", t, stall.worst))
        with Stall() as stall:
            t0 = time.perf_counter()
            await pilot.press("2")
            await until(pilot, lambda: f"{HELD} held" in status(app))
            t = time.perf_counter() - t0
        results.append((f"quarantine: {HELD:,} held listed with decisions", t, stall.worst))
        with Stall() as stall:
            t0 = time.perf_counter()
            await pilot.press("right_square_bracket")
            await until(pilot, lambda: "page 2 of" in status(app))
            t = time.perf_counter() - t0
        results.append(("quarantine: next page", t, stall.worst))
    return results


def main() -> int:
    cfg = build()
    results = asyncio.run(drive(cfg))
    lines = [
        "# TUI benchmark",
        "",
        f"`make bench-tui` on {platform.node()} ({platform.machine()}), Python "
        f"{platform.python_version()}: {ROWS:,} decision rows, {HELD:,} held messages, 120x40.",
        "Wall-clock seconds on a shared machine, from the keypress to the screen showing the",
        "result; the UI stall is the event loop's worst lateness while the step ran (the work",
        "is in worker threads). The hold queue here is made from the database, so the time",
        "`postqueue -j` takes to list 100,000 real messages is not in it.",
        "",
        "| step | seconds | worst UI stall (ms) |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t:.3f} | {stall * 1000:.0f} |" for name, t, stall in results]
    REPORT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(ROOT, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
