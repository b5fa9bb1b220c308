"""A long From cannot stall the milter (issue 13 point 5): a 90 KB `a.a.a... <x@y>` From over
SMTP is answered within 5 s, and a message sent meanwhile on another session within 2 s."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Stack, module_stack
from tests.helpers import message


@pytest.fixture(scope="module")
def from_stack() -> Iterator[Stack]:
    for s in module_stack("long-from"):
        s.start()
        yield s


@pytest.mark.parametrize("shape", ["dots", "comments"])
def test_a_90kb_from_does_not_stall_any_session(from_stack: Stack, shape: str) -> None:
    sb = from_stack.sandbox
    # Folded into lines under 998 octets, as a client must send it; ~90 KB in all.
    unit = "a." * 40 if shape == "dots" else "(a)" * 27
    name = "\r\n ".join([unit] * 1100)
    huge = message(from_=f"{name} <alice@example.com>", subject=f"huge {shape}")
    assert 88_000 < len(huge) < 100_000
    results: dict[str, tuple[int, str, float]] = {}

    def send(key: str, msg: bytes, login: str) -> None:
        started = time.monotonic()
        res = sb.smtp_send(msg, login, ["x@remote.test"], login=login)
        results[key] = (res.code, res.text, time.monotonic() - started)

    big = threading.Thread(target=send, args=("big", huge, "alice@example.com"))
    big.start()
    time.sleep(0.2)  # the huge one is in the milter's hands first
    send(
        "small",
        message(from_="Bob <bob@example.net>", subject=f"meanwhile {shape}"),
        "bob@example.net",
    )
    big.join(timeout=30)
    code, text, seconds = results["big"]
    assert seconds < 5, results
    assert code in (550, 554) and "From header is" in text and "at most 2,048" in text, results
    code, text, seconds = results["small"]
    assert code == 250 and seconds < 2, results
