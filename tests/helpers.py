"""Helpers shared by the tests: configs on disk, messages, keys."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

BASIC_POLICY = """
[defaults]
unknown_from_domain = "reject"

[domains."example.com"]

[domains."example.net"]
include_subdomains = true

[local]
send_as = { "www-data" = ["*@example.com"] }
"""


def write_config(
    root: Path,
    policy: str = BASIC_POLICY,
    *,
    daemon_extra: str = "",
    socket: str | None = None,
    outbound: str = '["sasl", "local"]',
    on_error: str = "tempfail",
) -> Path:
    """A postwarden.toml and one policy file under `root`; returns the postwarden.toml path."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "10-test.toml").write_text(textwrap.dedent(policy))
    cfg = root / "postwarden.toml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            policies = "policies"
            [milter]
            socket = "{socket or "unix:" + str(root / "postwarden.sock")}"
            outbound = {outbound}
            on_error = "{on_error}"
            pidfile = "postwarden.pid"
            user = "root"
            [log]
            to = "stderr"
            [store]
            database = "postwarden.db"
            """
        )
        + textwrap.dedent(daemon_extra)
    )
    return cfg


def write_key(path: Path, algorithm: str = "rsa", bits: int = 2048, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = (
        rsa.generate_private_key(65537, bits)
        if algorithm == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, mode)
    return path


def message(
    from_: str = "Alice <alice@example.com>",
    to: str = "bob@remote.test",
    subject: str = "test",
    body: str = "hello",
    extra: str = "",
) -> bytes:
    return (
        f"From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()
