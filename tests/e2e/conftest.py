"""A private Postfix with postwarden and a sink, for the end-to-end tests (as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden import demo
from postwarden.sandbox import Sandbox
from postwarden.store import open_db, queries

# Under /var/tmp: pytest's tmp_path is mode 0700, which the postfix user cannot search.
E2E_ROOT = Path("/var/tmp/postwarden-tests")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _needs_root_and_postfix() -> None:
    # Never a silent skip in CI: the end-to-end tests are the proof.
    if os.geteuid() != 0 or not shutil.which("postfix"):
        pytest.fail("end-to-end tests need root and Debian's postfix: run `make test`")


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sandbox = Sandbox(root / "sandbox")
        self.sandbox.configure()
        # The demo's own config and policies/demo.toml: what the tests prove is what it runs.
        self.config = demo.write_config(root, self.sandbox)
        self.db_path = root / "etc" / "postwarden.db"

    def allow_local(self, user: str, patterns: list[str]) -> None:
        """Add a [local] send_as entry to the demo policy (there is one [local] table)."""
        policy = self.config.parent / "policies" / "10-demo.toml"
        quoted = ", ".join(f'"{p}"' for p in patterns)
        text = policy.read_text().replace(
            'send_as = { "www-data"', f'send_as = {{ "{user}" = [{quoted}], "www-data"', 1
        )
        policy.write_text(text)

    def start(self) -> None:
        self.sandbox.start_sink()
        self.sandbox.start_postfix()
        self.sandbox.start_milter(self.config)

    def decisions(self, **kw: object) -> list[dict[str, object]]:
        if not self.db_path.exists():
            return []
        return queries.decisions(open_db(self.db_path, readonly=True), limit=None, **kw)  # type: ignore[arg-type]

    def decision_for(self, queue_id: str, timeout: float = 15) -> dict[str, object]:
        self.sandbox.wait_for(lambda: self.decisions(queue_id=queue_id), timeout)
        rows = self.decisions(queue_id=queue_id)
        assert len(rows) == 1, f"{len(rows)} decision rows for {queue_id}"
        return rows[0]

    def stop(self) -> None:
        self.sandbox.stop_all()


def module_stack(name: str, extra_policy: str = "") -> Iterator[Stack]:
    """A stack of its own for one test module: the demo policy, plus `extra_policy` as
    policies/20-extra.toml."""
    root = E2E_ROOT / f"{name}-{uuid.uuid4().hex[:8]}"
    s = Stack(root)
    if extra_policy:
        (s.config.parent / "policies" / "20-extra.toml").write_text(extra_policy)
    yield s
    s.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for s in module_stack("postfix"):
        s.start()
        yield s


# ---- helpers several test modules share ----


def pw(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postwarden", "--config", str(stack.config), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def held_ids(stack: Stack) -> set[str]:
    return {str(q["queue_id"]) for q in stack.sandbox.queue() if q.get("queue_name") == "hold"}


def sink_with(stack: Stack, token: str) -> list[bytes]:
    return [
        p.read_bytes() for p in stack.sandbox.sink_dir.iterdir() if token.encode() in p.read_bytes()
    ]
