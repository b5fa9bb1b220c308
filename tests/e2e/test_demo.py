"""`postwarden demo` (what `make demo` runs) and `--stop`, on the demo's fixed ports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid

from postwarden.sandbox import port_in_use
from tests.e2e.conftest import E2E_ROOT


def test_demo_shows_accept_and_reject_rows_then_stops_everything() -> None:
    workdir = E2E_ROOT / f"demo-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, "-m", "postwarden", "demo", "--workdir", str(workdir)]
    try:
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        assert first.returncode == 0, first.stdout + first.stderr
        out = first.stdout
        assert "[4/4] decisions" in out
        table = out.split("[4/4] decisions")[1]
        assert " accept " in table and " reject " in table
        assert (
            "550 5.7.1 From <service@paypal.example>: domain paypal.example is not hosted" in table
        )
        assert "local:www-data" in table  # the sendmail(1) message
        assert "delivered to the sink: 10 message(s)" in out  # 9 accepted and the lock notice
        assert "held in Postfix's hold queue: 2 message(s)" in out
        assert "rate.exceeded, rate.locked_now" in table and "outbound.notice" in table
        assert "example.com/rsa2026, example.com/ed2026" in table  # signed with both keys
        assert port_in_use(2525)
        # swaks can send to the stack it leaves running
        swaks = subprocess.run(
            [
                "swaks",
                "--server",
                "127.0.0.1:2525",
                "--xclient-login",
                "alice@example.com",
                "--from",
                "alice@example.com",
                "--to",
                "bob@remote.test",
                "--header",
                "From: alice@example.com",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "250 2.0.0 Ok: queued as" in swaks.stdout, swaks.stdout
        # running it twice is safe: it stops the first stack and starts afresh
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "stopped the previous demo (postfix, postwarden, smtp-sink)" in second.stdout
        # and tells the same story: a fresh queue and database, the same lock at the same point
        assert "held in Postfix's hold queue: 2 message(s)" in second.stdout
        assert "delivered to the sink: 10 message(s)" in second.stdout
    finally:
        stop = subprocess.run(
            [*cmd, "--stop"], capture_output=True, text=True, timeout=60, check=False
        )
    assert stop.returncode == 0
    assert stop.stdout.strip() == "stopped: postfix, postwarden, smtp-sink"
    assert not port_in_use(2525) and not port_in_use(2526)
    leftover = subprocess.run(
        ["pgrep", "-f", str(workdir)], capture_output=True, text=True, check=False
    )
    assert leftover.stdout.strip() == "", "a process the demo started is still running"
    shutil.rmtree(workdir, ignore_errors=True)
