"""Tried as a new user would: `postwarden tui` in a real terminal (tmux, 80x24) against a
running private Postfix and milter, driven with send-keys and read with capture-pane. Each
screen must render its own content, and ctrl+q must leave a working shell."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack, module_stack
from tests.helpers import REPO, message

# Key, then a text only that screen shows once it has read its data.
SCREENS = [
    ("2", "held · page 1 of 1"),
    ("3", "sender(s) with mail counted in the last day"),
    ("4", "hosted domain(s)"),
    ("5", "[defaults]"),
    ("1", "decisions, newest first · live"),
]


@pytest.fixture(scope="module")
def tmux_stack() -> Iterator[Stack]:
    for s in module_stack("tmux"):
        s.start()
        yield s


def capture(session: str) -> str:
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=True
    ).stdout


def wait_for_text(session: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = capture(session)
        if text in screen:
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared; the pane shows:\n{screen}")
        time.sleep(0.2)


def test_each_screen_renders_in_tmux_at_80x24(tmux_stack: Stack) -> None:
    assert shutil.which("tmux"), "tmux is installed by `make install`"
    sb = tmux_stack.sandbox
    address = "mallory@example.com"
    for i in range(7):  # 5 accepted, 2 held, mallory locked: something on every screen
        sb.smtp_send(
            message(from_=address, subject=f"tmux {i}"), address, ["x@remote.test"], login=address
        )
    session = f"pw-{uuid.uuid4().hex[:6]}"
    command = f"{sys.executable} -m postwarden --config {tmux_stack.config} tui; echo TUI-EXITED-$?"
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "80",
            "-y",
            "24",
            "-c",
            str(REPO),
            "env",
            "TERM=xterm-256color",
            "bash",
            "-c",
            command + "; sleep 600",
        ],
        check=True,
    )
    try:
        first = wait_for_text(session, "decisions, newest first · live")
        assert "sasl:mallory@example.com" in first and "quarantine" in first
        shown = {}
        for key, text in SCREENS:
            subprocess.run(["tmux", "send-keys", "-t", session, key], check=True)
            shown[key] = wait_for_text(session, text)
        assert "sasl:mallory@example.com" in shown["2"]
        assert "LOCKED" in shown["3"]
        assert "example.com" in shown["4"]
        assert "user mallory@example.com" in shown["5"]
        for pane in shown.values():
            assert len(pane.splitlines()) <= 24
            assert "Traceback" not in pane
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        wait_for_text(session, "TUI-EXITED-0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def test_markup_in_a_subject_is_shown_literally_in_tmux(tmux_stack: Stack) -> None:
    """Issue 13 point 9: a Subject of `[/]` killed the Decisions screen with MarkupError (and
    would at every start while the row is kept); `[link=...]` could disguise it."""
    sb = tmux_stack.sandbox
    address = "carol@example.com"
    subjects = ["[/]", "[link=https://evil.test]x[/link]"]
    for subject in subjects:
        res = sb.smtp_send(
            message(from_=f"Carol <{address}>", subject=subject),
            address,
            ["x@remote.test"],
            login=address,
        )
        assert res.code == 250, res
    assert sb.wait_for(lambda: len(tmux_stack.decisions(sender=f"sasl:{address}")) == 2, 15)
    session = f"pw-{uuid.uuid4().hex[:6]}"
    command = f"{sys.executable} -m postwarden --config {tmux_stack.config} tui; echo TUI-EXITED-$?"
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "120",
            "-y",
            "40",
            "-c",
            str(REPO),
            "env",
            "-u",  # shutil.get_terminal_size() would take pytest's COLUMNS and LINES
            "COLUMNS",
            "-u",
            "LINES",
            "TERM=xterm-256color",
            "bash",
            "-c",
            "read -r; " + command + "; sleep 600",
        ],
        check=True,
    )
    # Another tmux server's options (window-size) may have sized it: make it 120x40, and only
    # then start the TUI (it waits for a line on its input).
    subprocess.run(["tmux", "resize-window", "-t", session, "-x", "120", "-y", "40"], check=True)
    size = subprocess.run(
        ["tmux", "display", "-p", "-t", session, "#{window_width}x#{window_height}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        assert size == "120x40", size
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)  # now start it
        first = wait_for_text(session, "decisions, newest first · live")
        assert "MarkupError" not in first and "Traceback" not in first
        # The newest row is under the cursor: its detail shows the whole Subject.
        assert "[link=https://evil.test]x[/link]" in first, first
        rows = [line for line in first.splitlines() if "sasl:carol@example.com" in line]
        assert any("[/]" in line for line in rows), first
        # Move over both rows (each repaints the detail) and wait a poll: still up.
        subprocess.run(["tmux", "send-keys", "-t", session, "Down"], check=True)
        again = wait_for_text(session, "Subject     [/]")
        time.sleep(2)
        again = capture(session)
        assert "decisions, newest first · live" in again and "TUI-EXITED" not in again
        assert "MarkupError" not in again and "Traceback" not in again
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        wait_for_text(session, "TUI-EXITED-0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
