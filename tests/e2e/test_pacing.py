"""Pacing end to end (streams.md): a web form sends 200 bulk messages through sendmail(1) with
[streams.bulk].pace set; every submission succeeds at once, all 200 are held as pace.paced
within seconds, and the daemon's releaser lets them out in order: all 200 arrive at the bulk
sink, none twice, never more than N in any window of the pace (measured at the sink). Then a
kill -9 of the daemon in the middle of a paced release and a restart: every message is still
delivered exactly once and the pace holds across the restart.

POSTWARDEN_PACE (default "4/second", time shrunk as streams.md allows) and POSTWARDEN_PACE_N
(default 200) set the pace and the count: POSTWARDEN_PACE=60/minute runs the spec's own pace.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest

from postwarden.config.models import parse_rate
from postwarden.milter.releaser import CRASH_ENV
from postwarden.policy.streams import spacing
from tests.e2e.conftest import Stack
from tests.e2e.streams_stack import BULK, WIDE_CAPS, BulkSink, streams_stack
from tests.helpers import message

PACE = os.environ.get("POSTWARDEN_PACE", "4/second")
N_MESSAGES = int(os.environ.get("POSTWARDEN_PACE_N", "200"))
LIMIT, WINDOW = parse_rate(PACE)
GAP = spacing(LIMIT, WINDOW)


@pytest.fixture(scope="module")
def st() -> Iterator[tuple[Stack, BulkSink]]:
    yield from streams_stack("pacing", f'\n[streams.bulk]\npace = "{PACE}"\n', WIDE_CAPS)


def _subject(path: Path) -> str:
    return str(message_from_bytes(path.read_bytes())["Subject"])


def arrivals(bulk: BulkSink, prefix: str) -> list[tuple[float, str]]:
    """(time the sink wrote it, Subject) of each delivered message of this run, by time."""
    out = []
    for p in bulk.files():
        subject = _subject(p)
        if subject.startswith(prefix):
            out.append((p.stat().st_mtime, subject))
    return sorted(out)


def most_in_any_window(times: list[float], window: float) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def submit(stack: Stack, prefix: str, n: int) -> float:
    """n bulk messages from the web form through sendmail(1); the seconds it took."""
    started = time.monotonic()
    for i in range(n):
        res = stack.sandbox.sendmail(
            message("News <news@news.example.com>", subject=f"{prefix} {i:04d}", extra=BULK),
            "news@news.example.com",
            [f"reader{i}@remote.test"],
        )
        assert res.returncode == 0, res.stderr
    took = time.monotonic() - started
    stack.sandbox.kick_pickup()
    return took


def release_order(stack: Stack, prefix: str) -> list[str]:
    """Subjects of this run's messages in the order the releaser let them out (streams.md:
    "releases it in order"). The order they reach the sink is Postfix's: two released half a
    second apart may be delivered by two smtp processes in either order."""
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT d.subject FROM pace_releases r JOIN decisions d ON d.queue_id = r.queue_id"
            " ORDER BY r.time, r.id"
        ).fetchall()
    return [str(s) for (s,) in rows if str(s).startswith(prefix)]


def release_times(stack: Stack) -> list[float]:
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        return [float(r[0]) for r in db.execute("SELECT time FROM pace_releases ORDER BY time")]


def diagnose(stack: Stack, got: list[tuple[float, str]]) -> str:
    """The arrivals around the densest window, with their release times."""
    times = [t for t, _ in got]
    best, at, j = 0, 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - WINDOW:
            j += 1
        if i - j + 1 > best:
            best, at = i - j + 1, j
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        released = dict(
            db.execute(
                "SELECT d.subject, r.time FROM pace_releases r JOIN decisions d"
                " ON d.queue_id = r.queue_id"
            ).fetchall()
        )
    return "; ".join(
        f"{s} sink {t:.3f} released {released.get(s, 0):.3f}"
        for t, s in got[max(0, at - 1) : at + best + 1]
    )


def _scheduled(stack: Stack) -> int:
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM paced").fetchone()[0])


def held_rows(stack: Stack, prefix: str) -> list[dict[str, object]]:
    return [d for d in stack.decisions() if str(d["subject"]).startswith(prefix)]


def test_200_bulk_messages_accepted_at_once_and_released_at_the_pace(
    st: tuple[Stack, BulkSink], capsys: pytest.CaptureFixture[str]
) -> None:
    stack, bulk = st
    started = time.monotonic()
    took = submit(stack, "paced", N_MESSAGES)
    assert took < 30, f"{N_MESSAGES} submissions took {took:.1f}s"
    # Every one decided and held as pace.paced within seconds (pickup's wake-up, no waiting on
    # the pace): the web form and the milter are done long before the mail is.
    assert stack.sandbox.wait_for(lambda: len(held_rows(stack, "paced")) == N_MESSAGES, 60)
    held_in = time.monotonic() - started
    rows = held_rows(stack, "paced")
    assert {r["action"] for r in rows} == {"quarantine"}
    assert all([x["check"] + "." + x["code"] for x in r["reasons"]] == ["pace.paced"] for r in rows)  # type: ignore[index, union-attr]
    expected = N_MESSAGES * GAP
    assert stack.sandbox.wait_for(
        lambda: len(arrivals(bulk, "paced")) >= N_MESSAGES, expected + 90, interval=0.5
    ), (len(arrivals(bulk, "paced")), stack.sandbox.milter_log.read_text()[-2000:])
    time.sleep(min(5, 2 * GAP))  # nothing more arrives
    got = arrivals(bulk, "paced")
    subjects = [s for _, s in got]
    assert len(subjects) == N_MESSAGES and len(set(subjects)) == N_MESSAGES  # all, none twice
    times = [t for t, _ in got]
    worst = most_in_any_window(times, WINDOW)
    assert worst <= LIMIT, (
        f"{worst} arrived within {WINDOW}s, pace {PACE};"
        f" at release {most_in_any_window(release_times(stack), WINDOW)}; {diagnose(stack, got)}"
    )
    # In order: released in the order postwarden held them in.
    held_order = [str(r["subject"]) for r in sorted(rows, key=lambda r: int(r["id"]))]  # type: ignore[call-overload]
    assert release_order(stack, "paced") == held_order
    spread = times[-1] - times[0]
    assert spread >= (N_MESSAGES - LIMIT) * WINDOW / LIMIT  # not faster than the pace
    assert not [q for q in stack.sandbox.queue() if q.get("queue_name") == "hold"]
    with capsys.disabled():
        print(
            f"\n[pacing] {N_MESSAGES} submitted in {took:.1f}s, all held in"
            f" {held_in:.0f}s; delivered over {spread:.0f}s at {PACE};"
            f" at most {worst} in any {WINDOW}s; closest two {min(b - a for a, b in itertools.pairwise(times)):.3f}s apart"
        )


def test_kill_9_during_a_paced_release_then_restart(st: tuple[Stack, BulkSink]) -> None:
    stack, bulk = st
    sb = stack.sandbox
    n = max(LIMIT * 3 // 2, 20)
    submit(stack, "killed", n)
    assert sb.wait_for(lambda: len(held_rows(stack, "killed")) == n, 60)
    assert sb.wait_for(lambda: len(arrivals(bulk, "killed")) >= n // 3, n * GAP + 30, 0.05)
    assert sb.milter_proc is not None
    os.kill(sb.milter_proc.pid, signal.SIGKILL)
    sb.milter_proc.wait(10)
    before = len(arrivals(bulk, "killed"))
    time.sleep(2)
    sb.start_milter(stack.config)
    assert sb.wait_for(lambda: len(arrivals(bulk, "killed")) >= n, n * GAP + 90, 0.5), (
        len(arrivals(bulk, "killed")),
        sb.milter_log.read_text()[-2000:],
    )
    time.sleep(min(5, 2 * GAP))
    got = arrivals(bulk, "killed")
    subjects = [s for _, s in got]
    assert len(subjects) == n and len(set(subjects)) == n, (before, len(subjects))
    assert most_in_any_window([t for t, _ in got], WINDOW) <= LIMIT
    assert not [q for q in sb.queue() if q.get("queue_name") == "hold"]
    log = sb.milter_log.read_text()
    assert "releaser: started" in log
    # The schedule is empty: nothing left claimed or waiting.
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM paced").fetchone() == (0,)
        releases = db.execute("SELECT COUNT(*) FROM pace_releases").fetchone()[0]
    assert releases == N_MESSAGES + n  # each counted once, across the kill
    assert re.search(r"released by the releaser", log)


def test_a_paced_message_released_or_deleted_by_hand_is_gone_from_the_schedule(
    st: tuple[Stack, BulkSink],
) -> None:
    stack, bulk = st
    sb = stack.sandbox
    n = max(LIMIT * 3, 30)
    submit(stack, "byhand", n)
    assert sb.wait_for(lambda: len(held_rows(stack, "byhand")) == n, 60)
    rows = sorted(held_rows(stack, "byhand"), key=lambda r: int(r["id"]))  # type: ignore[call-overload]
    released, deleted = str(rows[-2]["queue_id"]), str(rows[-1]["queue_id"])
    for verb, q in (("release", released), ("delete", deleted)):
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "postwarden",
                "--config",
                str(stack.config),
                "quarantine",
                verb,
                q,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert res.returncode == 0, res.stderr
    assert sb.wait_for(lambda: len(arrivals(bulk, "byhand")) >= n - 1, n * GAP + 60, 0.5)
    time.sleep(min(5, 3 * GAP))
    subjects = [s for _, s in arrivals(bulk, "byhand")]
    assert len(subjects) == n - 1 and len(set(subjects)) == n - 1, (
        len(subjects),
        len(set(subjects)),
        sb.milter_log.read_text()[-3000:],
    )  # the released one once
    assert str(rows[-1]["subject"]) not in subjects and str(rows[-2]["subject"]) in subjects
    assert sb.wait_for(lambda: _scheduled(stack) == 0, 30)
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        counted = db.execute(
            f"SELECT COUNT(*) FROM pace_releases WHERE queue_id IN ({','.join('?' * n)})",
            [str(r["queue_id"]) for r in rows],
        ).fetchone()[0]
    assert counted == n - 2  # what the admin released or deleted used none of the pace


@pytest.mark.parametrize("where", ["after_claim", "after_release"])
def test_killed_between_the_claim_and_postfix_a_restart_finishes_it_once(
    st: tuple[Stack, BulkSink], where: str
) -> None:
    """SIGKILL at the two points of a release (the test hook POSTWARDEN_RELEASER_CRASH):
    after the claim is committed and before postsuper -H, and after postsuper -H and before the
    row is forgotten. The restarted daemon finishes the release: each message leaves once, and
    its release is counted once."""
    stack, bulk = st
    sb = stack.sandbox
    prefix = f"crash-{where}"
    sb.stop_milter()
    os.environ[CRASH_ENV] = where
    try:
        sb.start_milter(stack.config)
        n = 3
        submit(stack, prefix, n)
        assert sb.milter_proc is not None
        sb.milter_proc.wait(60)  # it kills itself at its first release
        assert sb.milter_proc.returncode == -signal.SIGKILL
    finally:
        os.environ.pop(CRASH_ENV, None)
    rows = sorted(held_rows(stack, prefix), key=lambda r: int(r["id"]))  # type: ignore[call-overload]
    first = str(rows[0]["queue_id"])
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        assert db.execute("SELECT state FROM paced WHERE queue_id = ?", [first]).fetchone() == (
            "releasing",
        )
    in_hold = {str(q["queue_id"]) for q in sb.queue() if q.get("queue_name") == "hold"}
    assert (first in in_hold) == (where == "after_claim")
    sb.start_milter(stack.config)
    assert sb.wait_for(lambda: len(arrivals(bulk, prefix)) >= n, 60, 0.2)
    time.sleep(3 * GAP + 1)
    subjects = [s for _, s in arrivals(bulk, prefix)]
    assert sorted(subjects) == sorted({str(r["subject"]) for r in rows}) and len(subjects) == n
    assert sb.wait_for(lambda: _scheduled(stack) == 0, 10)
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        counted = db.execute(
            "SELECT queue_id, COUNT(*) FROM pace_releases WHERE queue_id IN (?, ?, ?)"
            " GROUP BY queue_id",
            [str(r["queue_id"]) for r in rows],
        ).fetchall()
    assert sorted(c for _, c in counted) == [1] * n
