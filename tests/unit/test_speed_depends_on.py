"""What postwarden's speed depends on, asserted without timing (issue 21): work that ordinary
mail must never cause."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from postwarden.config import keys, load_config
from postwarden.policy import html
from tests.helpers import write_config, write_key

MULTIPART = (
    b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    b"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(bytes(range(256)) * 300).replace(b"\n", b"\r\n")
    + b"--b--\r\n"
)
HEADERS = [("MIME-Version", "1.0"), ("Content-Type", 'multipart/mixed; boundary="b"')]


def test_a_multipart_message_without_text_html_is_never_parsed_by_the_email_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_parse(*a: object, **k: object) -> None:
        raise AssertionError("the email package parsed the message")

    monkeypatch.setattr(html.email, "message_from_bytes", no_parse)
    assert html.wrap_bare_html(HEADERS, MULTIPART) is None


def test_only_the_html_leaf_is_parsed_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = html.email.message_from_bytes

    def counting(data: bytes, **k: object) -> object:
        seen.append(len(data))
        return real(data, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(html.email, "message_from_bytes", counting)
    body = MULTIPART.replace(
        b"--b--\r\n", b"--b\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--b--\r\n"
    )
    assert html.wrap_bare_html(HEADERS, body) is not None
    assert len(seen) == 1 and seen[0] < 100  # the small HTML part, not the 100 KB body


def test_a_reload_with_unchanged_key_files_parses_no_key(tmp_path: Path) -> None:
    policy = (
        '[domains."example.com"]\nkeys = ['
        + ", ".join(f'{{ selector = "s{i}", file = "k{i}.key" }}' for i in range(20))
        + "]\n"
    )
    for i in range(20):
        write_key(tmp_path / "policies" / f"k{i}.key", algorithm="rsa" if i % 2 else "ed25519")
    cfg = write_config(tmp_path, policy)
    load_config(cfg)
    before = keys.parses
    again = load_config(cfg)  # what a reload does
    assert keys.parses == before and len(again.keys["example.com"]) == 20
    write_key(tmp_path / "policies" / "k3.key")  # a rotated key
    load_config(cfg)
    assert keys.parses == before + 1
    # Its owner and mode are still checked on every load, cached or not.
    (tmp_path / "policies" / "k4.key").chmod(0o644)
    with pytest.raises(Exception, match="readable by group or others"):
        load_config(cfg)


def test_postwarden_reload_puts_no_key_through_openssl_s_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command runs on the machine that carries the mail: with 100 keys the check cost it
    4.5 s of CPU every reload. The daemon checks the keys whose files changed (above)."""
    from postwarden.cli import main

    checked: list[bool] = []
    real = keys._parse

    def recording(data: bytes, validate: bool) -> object:
        checked.append(validate)
        return real(data, validate)

    monkeypatch.setattr(keys, "_parse", recording)
    monkeypatch.setattr(keys, "_PARSED", {})
    policy = (
        '[domains."example.com"]\nkeys = ['
        + ", ".join(f'{{ selector = "s{i}", file = "k{i}.key" }}' for i in range(4))
        + "]\n"
    )
    for i in range(4):
        write_key(tmp_path / "policies" / f"k{i}.key")
    assert main(["--config", str(write_config(tmp_path, policy)), "reload"]) == 75  # no daemon
    assert checked == [False] * 4


def _probe(tmp_path: Path, code: str) -> list[str]:
    """Run `code` in a fresh interpreter (nothing imported yet) beside a one-domain config,
    whose path `{cfg}` names in it; its output's lines."""
    import subprocess
    import sys

    write_key(tmp_path / "policies" / "k.key")
    cfg = write_config(
        tmp_path, '[domains."example.com"]\nkeys = [{ selector = "s", file = "k.key" }]\n'
    )
    out = subprocess.run(
        [sys.executable, "-c", code.replace("{cfg}", repr(str(cfg)))],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split("\n")


def test_no_command_parses_the_public_suffix_list_before_it_needs_it(tmp_path: Path) -> None:
    """Parsing the bundled list costs about 60 ms of CPU (165 ms under a profiler). Three
    modules built it at import, so every command paid it, `postwarden reload` among them on
    the machine that carries the mail. Now only an alignment check, a report or the doctor
    parses it, once per process; the milter does so at start."""
    out = _probe(
        tmp_path,
        "from postwarden import suffixes\n"
        "from postwarden.cli import main\n"
        "import postwarden.reports.summary, postwarden.dnsdoctor.doctor\n"
        "code = main(['--config', {cfg}, 'reload'])\n"
        "print(code, suffixes._list is None)\n"
        "from postwarden.policy.checks.identity import aligned\n"
        "print(aligned('mail.example.co.uk', 'example.co.uk', 'relaxed'),"
        " suffixes._list is None)\n",
    )
    assert out[-3:] == ["75 True", "True False", ""]  # no daemon: exit 75, and the list unparsed


def test_postwarden_reload_loads_neither_the_engine_nor_the_writer(tmp_path: Path) -> None:
    """Imports were nearly all of the command's CPU (0.45 s of it; loading the policy takes
    13 ms). It needs the config loader and the daemon's status row, not the policy engine,
    the rate store or the decision writer that `from postwarden.store import ...` loaded."""
    heavy = ["postwarden.policy.engine", "postwarden.store.writer", "postwarden.store.rates"]
    out = _probe(
        tmp_path,
        "import sys\n"
        "from postwarden.cli import main\n"
        "code = main(['--config', {cfg}, 'reload'])\n"
        f"print(code, [m for m in {heavy!r} if m in sys.modules])\n"
        "from postwarden.store import Writer, migrate, open_db\n"  # still there, when asked for
        f"print([m for m in {heavy!r} if m in sys.modules] == {heavy!r})\n",
    )
    assert out[-3:] == ["75 []", "True", ""]
