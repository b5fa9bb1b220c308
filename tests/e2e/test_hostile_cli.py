"""Hostile input against the admin's commands, through the private Postfix (issue 13, 10-11):
`quarantine show` takes only a queue id of a held message and never hands an option to
postcat; header values with escape sequences reach the terminal as visible escapes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack, module_stack

ESC_SUBJECT = "pay \x1b]0;pwned\x07\x1b[2J now \u202eexe.fdp"


@pytest.fixture(scope="module")
def hostile_stack() -> Iterator[Stack]:
    for s in module_stack("hostile-cli"):
        s.start()
        conf = str(s.sandbox.conf_dir)
        # Keep mail in the queue: one message held, one only deferred.
        subprocess.run(["postconf", "-c", conf, "-e", "defer_transports = smtp"], check=True)
        subprocess.run(["postfix", "-c", conf, "reload"], check=True, capture_output=True)
        yield s


def send(stack: Stack, subject: str, sender: str) -> str:
    msg = (
        f"From: {sender}\r\nTo: x@remote.test\r\nSubject: {subject}\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m@elsewhere.test>\r\n\r\nbody\r\n"
    ).encode()
    res = stack.sandbox.smtp_send(msg, "someone@elsewhere.test", ["x@remote.test"])
    assert res.code == 250, res
    found = re.search(r"queued as ([0-9A-Za-z]+)", res.text)
    assert found, res.text
    return found.group(1)


def cli(
    stack: Stack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_quarantine_show_takes_only_held_queue_ids(hostile_stack: Stack, tmp_path: Path) -> None:
    sb = hostile_stack.sandbox
    held_id = send(hostile_stack, ESC_SUBJECT, "Someone <someone@elsewhere.test>")
    deferred_id = send(hostile_stack, "just queued", "someone@elsewhere.test")
    subprocess.run(
        ["postsuper", "-c", str(sb.conf_dir), "-h", held_id], check=True, capture_output=True
    )
    hostile_stack.decision_for(held_id)
    queues = {str(q["queue_id"]): q["queue_name"] for q in sb.queue()}
    assert queues[held_id] == "hold" and queues[deferred_id] != "hold", queues

    # Every postcat call is logged by a shim first on PATH.
    shim = tmp_path / "bin"
    shim.mkdir()
    calls = tmp_path / "postcat.calls"
    (shim / "postcat").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec /usr/sbin/postcat "$@"\n')
    (shim / "postcat").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}"}

    for bad in (["--", f"-c{tmp_path}"], ["--", "-cDIR"], ["../../etc/passwd"], [held_id + " -v"]):
        res = cli(hostile_stack, "quarantine", "show", *bad, env=env)
        assert res.returncode == 2, (bad, res)
        assert "is not a Postfix queue id" in res.stderr, res.stderr
        assert "main.cf" not in res.stderr
    res = cli(hostile_stack, "quarantine", "show", deferred_id, env=env)
    assert res.returncode == 1, res
    assert f"{deferred_id} is not in the hold queue" in res.stderr
    assert not calls.exists(), calls.read_text()  # postcat never ran for any of them

    res = cli(hostile_stack, "quarantine", "show", held_id, env=env)
    assert res.returncode == 0, res
    assert calls.read_text().split() == ["-c", str(sb.conf_dir), "-bh", "-q", "--", held_id]
    assert "Subject: pay \\x1b]0;pwned\\x07\\x1b[2J now \\u202eexe.fdp" in res.stdout
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\u202e" not in res.stdout
    assert "*** postwarden decision" in res.stdout


def test_log_and_quarantine_list_print_header_values_as_escapes(hostile_stack: Stack) -> None:
    queue_id = send(hostile_stack, "x", "\x1b[31mRed\x1b[0m <red@elsewhere.test>")
    subprocess.run(
        ["postsuper", "-c", str(hostile_stack.sandbox.conf_dir), "-h", queue_id],
        check=True,
        capture_output=True,
    )
    hostile_stack.decision_for(queue_id)
    for args in (["log", "--limit", "50"], ["quarantine", "list", "--per-page", "100"]):
        res = cli(hostile_stack, *args)
        assert res.returncode == 0, res
        assert "\\x1b[31mRed" in res.stdout, (args, res.stdout)
        assert "\x1b" not in res.stdout, args
