"""A compromised account's pile: 10,000 held messages, deleted in bulk with a bounded number of
postsuper processes (one per batch of 10,000 queue ids), and the time it took."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, module_stack

N = int(os.environ.get("POSTWARDEN_BULK_N", "10000"))


@pytest.fixture(scope="module")
def bulk_stack() -> Iterator[Stack]:
    for s in module_stack("bulk"):
        s.start()
        yield s


def test_bulk_delete_of_10000_held_messages(
    bulk_stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sb = bulk_stack.sandbox
    conf = str(sb.conf_dir)
    # Keep mail in the queue, then hold it all: the state a locked account leaves behind.
    subprocess.run(["postconf", "-c", conf, "-e", "defer_transports = smtp"], check=True)
    subprocess.run(["postfix", "-c", conf, "reload"], check=True, capture_output=True)
    started = time.monotonic()
    subprocess.run(
        [
            "smtp-source",
            "-m",
            str(N),
            "-s",
            "20",
            "-l",
            "512",
            "-f",
            "bulk@elsewhere.test",
            "-t",
            "x@remote.test",
            f"127.0.0.1:{sb.smtp_port}",
        ],
        check=True,
        timeout=600,
    )
    subprocess.run(["postsuper", "-c", conf, "-h", "ALL"], check=True, capture_output=True)
    held = [q for q in sb.queue() if q.get("queue_name") == "hold"]
    assert len(held) == N
    fill = time.monotonic() - started

    # Count the postsuper processes through a shim first on PATH.
    shim = tmp_path / "bin"
    shim.mkdir()
    log = tmp_path / "postsuper.calls"
    (shim / "postsuper").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\nexec /usr/sbin/postsuper "$@"\n'
    )
    (shim / "postsuper").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "postwarden",
            "--config",
            str(bulk_stack.config),
            "quarantine",
            "delete",
            "--sender",
            "bulk@elsewhere.test",
            "--note",
            "spam run",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == -(-N // 10_000) and all(c.endswith("-d -") for c in calls)
    assert not [q for q in sb.queue() if q.get("queue_name") == "hold"]
    with capsys.disabled():
        print(f"\n[bulk] {N} messages held in {fill:.1f}s; {res.stdout.strip()}")
    subprocess.run(["postconf", "-c", conf, "-e", "defer_transports ="], check=True)
