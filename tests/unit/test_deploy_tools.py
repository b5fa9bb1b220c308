"""setup-postfix against a real postconf on a copy of Debian's config; the notice submitter's
sendmail fallback and its process-group kill; files root's commands give to the service user."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden.cli import main
from postwarden.milter import notify
from postwarden.owner import service_owner, unreadable_as, user_name
from tests.helpers import write_config

DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")
MASTER_CF = Path("/etc/postfix/master.cf")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def postfix_dir(tmp_path: Path) -> Path:
    if not shutil.which("postconf") or not DEBIAN_MAIN_CF.exists() or not MASTER_CF.exists():
        pytest.fail("these tests need Debian's postfix: run `make test`")
    d = tmp_path / "postfix"
    d.mkdir()
    shutil.copy(DEBIAN_MAIN_CF, d / "main.cf")
    shutil.copy(MASTER_CF, d / "master.cf")
    return d


def postconf(d: Path, *args: str) -> str:
    return subprocess.run(
        ["postconf", "-c", str(d), *args], capture_output=True, text=True, check=True
    ).stdout


def test_setup_postfix_shows_then_makes_each_change_once(
    postfix_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (postfix_dir / "main.cf").read_text(), (postfix_dir / "master.cf").read_text()
    assert main(["setup-postfix", "--dry-run", "--config-directory", str(postfix_dir)]) == 0
    dry = capsys.readouterr().out
    assert (
        (postfix_dir / "main.cf").read_text(),
        (postfix_dir / "master.cf").read_text(),
    ) == before
    assert "-main.cf: disable_mime_output_conversion = no" in dry
    assert "+main.cf: disable_mime_output_conversion = yes" in dry
    assert main(["setup-postfix", "--config-directory", str(postfix_dir)]) == 0
    made = capsys.readouterr().out
    assert made.splitlines()[:-1] == dry.splitlines()[:-1]
    main_cf = postconf(postfix_dir, "-h", "smtpd_milters", "non_smtpd_milters")
    assert main_cf.split() == ["unix:/postwarden/postwarden.sock"] * 2
    for key, value in {
        "milter_default_action": "tempfail",
        "disable_mime_output_conversion": "yes",
        "message_reject_characters": "\\0",
    }.items():
        assert postconf(postfix_dir, "-h", key).strip() == value
    params = postconf(postfix_dir, "-P")
    assert "submission/inet/milter_macro_daemon_name = ORIGINATING" in params
    assert "submission/inet/smtpd_sasl_type = dovecot" in params
    assert "postwarden-notice/unix/syslog_name = postfix/postwarden-notice" in params
    # Idempotent: the second run changes nothing.
    assert main(["setup-postfix", "--config-directory", str(postfix_dir)]) == 0
    assert "nothing to change" in capsys.readouterr().out
    # The notifier finds the notice service's socket.
    queue = postconf(postfix_dir, "-h", "queue_directory").strip()
    assert notify.notice_service(str(postfix_dir)) == f"{queue}/public/postwarden-notice"


def test_setup_postfix_adds_postwarden_to_a_service_milter_list(
    postfix_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    postconf(postfix_dir, "-Pe", "smtp/inet/smtpd_milters=unix:/opendkim/opendkim.sock")
    assert main(["setup-postfix", "--json", "--config-directory", str(postfix_dir)]) == 0
    assert '"key": "smtp/inet/smtpd_milters"' in capsys.readouterr().out
    assert (
        "smtp/inet/smtpd_milters = unix:/opendkim/opendkim.sock,unix:/postwarden/postwarden.sock"
        in postconf(postfix_dir, "-P")
    )


def test_a_hanging_sendmail_is_killed_with_its_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback path: a postdrop that never ends (as under NoNewPrivileges) must not be
    left behind. The fake sendmail starts a child that ignores SIGTERM, as postdrop did."""
    pidfile = tmp_path / "child.pid"
    fake = tmp_path / "sendmail"
    fake.write_text(
        f"#!/bin/sh\nsh -c 'trap \"\" TERM; echo $$ > {pidfile}; while :; do sleep 1; done' &\n"
        "wait\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(notify, "SUBMIT_TIMEOUT", 1)
    started = time.monotonic()
    with pytest.raises(notify.NoticeNotSent, match="timed out after 1 seconds"):
        notify.submit_sendmail("/etc/postfix", ["a@example.com"], b"Subject: x\n\nx\n")
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists()


def _root_and_nobody() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests need root: run `make test`")
    pwd.getpwnam("nobody")


def test_keygen_as_root_gives_key_and_folder_to_the_service_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _root_and_nobody()
    cfg = write_config(tmp_path / "etc")
    cfg.write_text(cfg.read_text().replace('user = "root"', 'user = "nobody"'))
    assert user_name(cfg) == "nobody"
    keys = tmp_path / "keys"
    assert (
        main(
            ["--config", str(cfg), "keygen", "example.com", "--selector", "s1", "--dir", str(keys)]
        )
        == 0
    )
    nobody = pwd.getpwnam("nobody")
    for path, mode in (
        (keys, 0o750),
        (keys / "example.com", 0o750),
        (keys / "example.com/s1.key", 0o600),
    ):
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (nobody.pw_uid, mode), path


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder others may search (pytest's tmp_path is under a 0700 folder)."""
    d = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="postwarden-unit-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_check_config_as_root_checks_the_service_user_can_read_each_key(
    open_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _root_and_nobody()
    (open_dir / "etc").mkdir(mode=0o755)
    cfg = write_config(open_dir / "etc")
    cfg.write_text(cfg.read_text().replace('user = "root"', 'user = "nobody"'))
    for f in [cfg, *cfg.parent.glob("policies/*.toml")]:
        f.chmod(0o644)
    (cfg.parent / "policies").chmod(0o755)
    assert main(["--config", str(cfg), "check-config"]) == 0
    capsys.readouterr()
    (cfg.parent / "policies" / "10-test.toml").chmod(0o600)
    assert main(["--config", str(cfg), "check-config"]) == 78
    out = capsys.readouterr().out
    assert "10-test.toml: the service user nobody cannot read it: Permission denied" in out
    assert unreadable_as("no-such-user-here", [str(cfg)]) is None
    assert service_owner("no-such-user-here") is None


def test_setup_postfix_warns_about_mynetworks_no_outbound_rule_covers(
    postfix_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from postwarden.setup_postfix import outbound_rules, uncovered_networks

    debian = "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"
    shipped = outbound_rules(REPO / "deploy" / "postfix" / "postwarden.toml")
    assert "network:127.0.0.0/8" in shipped
    assert uncovered_networks(debian, shipped) == []
    assert uncovered_networks(debian + " 192.0.2.0/24", shipped) == ["192.0.2.0/24"]
    # Without a network: rule (the spec's default), Debian's mynetworks would pass as inbound.
    assert uncovered_networks(debian, ["sasl", "local"]) == ["127.0.0.0/8", "::1/128"]
    # What Debian's postinst writes into main.cf.
    postconf(postfix_dir, "-e", f"mynetworks = {debian}")
    cfg = write_config(tmp_path / "etc")
    argv = ["--config", str(cfg), "setup-postfix", "--dry-run", "--config-directory"]
    assert main([*argv, str(postfix_dir)]) == 0
    err = capsys.readouterr().err
    assert 'add "network:127.0.0.0/8"' in err and 'add "network:::1/128"' in err


def test_import_opendkim_as_root_gives_the_policy_to_the_service_user(tmp_path: Path) -> None:
    _root_and_nobody()
    etc = tmp_path / "opendkim"
    etc.mkdir()
    (etc / "opendkim.conf").write_text(
        "Domain example.com\nSelector s1\nKeyFile /etc/dkimkeys/s1.private\n"
    )
    cfg = write_config(tmp_path / "etc")
    cfg.write_text(cfg.read_text().replace('user = "root"', 'user = "nobody"'))
    out = tmp_path / "20-imported.toml"
    argv = ["--config", str(cfg), "import-opendkim", "--conf", str(etc / "opendkim.conf")]
    assert main([*argv, "--output", str(out)]) == 0
    st = out.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam("nobody").pw_uid, 0o640)
