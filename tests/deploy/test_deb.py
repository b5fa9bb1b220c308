"""The Debian package on this machine, and a mail server set up by README's install steps.

One module, in order: `make deb`'s package is installed with dpkg; what it made is checked
against README; a private Postfix (chroot on) with Dovecot SASL is set up by README's
"Installing on a mail server" steps, paths mapped into a private root, and mail goes through
the installed postwarden running as its service user under the unit's sandbox emulated; then
`dpkg --purge` must leave the machine as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from postwarden.config.keys import load_key
from postwarden.config.loader import load_daemon_config
from postwarden.store import open_db, queries
from tests.deploy.mailstack import (
    PW,
    REPO,
    SERVICE_USER,
    STACK_ROOT,
    MailServer,
    build_deb,
    machine_state,
    map_path,
    run,
    sandboxed,
    stat_of,
)
from tests.dkim_verify import dkimpy_results, records_for

pytestmark = pytest.mark.slow
README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def package() -> Iterator[dict[str, object]]:
    if os.geteuid() != 0 or not shutil.which("dpkg-deb") or not shutil.which("postfix"):
        pytest.fail("the deploy tests need root, dpkg and Debian's postfix: run `make test`")
    before = machine_state()
    if before["dpkg"] or before["user"]:
        pytest.fail(f"postwarden is already on this machine ({before}): purge it first")
    # POSTWARDEN_DEB: a package built already (while working on these tests); else make deb's.
    deb = Path(os.environ["POSTWARDEN_DEB"]) if os.environ.get("POSTWARDEN_DEB") else build_deb()
    run(["dpkg", "-i", str(deb)])
    yield before
    if machine_state()["dpkg"]:
        run(["dpkg", "--purge", "postwarden"], check=False)


def test_the_package_makes_what_readme_promises(package: dict[str, object]) -> None:
    assert run(["id", "-nG", SERVICE_USER]).stdout.split() == [SERVICE_USER, "postfix", "postdrop"]
    expected = {
        "/etc/postwarden": ("root", SERVICE_USER, 0o750),
        "/etc/postwarden/postwarden.toml": ("root", SERVICE_USER, 0o640),
        "/etc/postwarden/policies": ("root", SERVICE_USER, 0o750),
        "/etc/postwarden/policies/00-defaults.toml": ("root", SERVICE_USER, 0o640),
        "/etc/postwarden/keys": ("root", SERVICE_USER, 0o750),
        "/var/lib/postwarden": (SERVICE_USER, SERVICE_USER, 0o700),
        "/var/lib/postwarden/postwarden.db": (SERVICE_USER, SERVICE_USER, 0o600),
        "/run/postwarden": (SERVICE_USER, SERVICE_USER, 0o700),
        "/var/spool/postfix/postwarden": (SERVICE_USER, "postfix", 0o750),
    }
    assert {p: stat_of(p) for p in expected} == expected
    # README's table of owners and modes says the same.
    for path, (user, group, mode) in expected.items():
        assert f"| `{path}` | `{user}:{group}` | `{mode:04o}` |" in README, path
    # The commented default config passes, as the service user too.
    assert "ok:" in run(["runuser", "-u", SERVICE_USER, "--", PW, "check-config"]).stdout
    assert "ok:" in run([PW, "check-config"]).stdout
    # The unit as installed: systemd's own checker, and its Documentation= file exists.
    res = run(["systemd-analyze", "verify", "/lib/systemd/system/postwarden.service"])
    assert res.stdout.strip() == res.stderr.strip() == ""
    unit = Path("/lib/systemd/system/postwarden.service").read_text()
    doc = re.search(r"^Documentation=file:(\S+)$", unit, re.M)
    assert doc and Path(doc.group(1)).is_file()
    # The releaser's unit (streams.md): installed, enabled, verified; the config it reads
    # tells the milter not to release itself.
    releaser = "/lib/systemd/system/postwarden-releaser.service"
    res = run(["systemd-analyze", "verify", releaser])
    assert res.stdout.strip() == res.stderr.strip() == ""
    wants = Path("/etc/systemd/system/multi-user.target.wants/postwarden-releaser.service")
    assert wants.is_symlink() and os.readlink(wants) == releaser
    assert load_daemon_config(Path("/etc/postwarden/postwarden.toml"), []).milter.releaser == (  # type: ignore[union-attr]
        "service"
    )


def test_keygen_as_root_gives_the_key_to_the_service_user(package: dict[str, object]) -> None:
    out = run([PW, "keygen", "deploy.test", "--selector", "t1", "--algorithm", "ed25519"]).stdout
    assert "t1._domainkey" in out
    key_dir = Path("/etc/postwarden/keys/deploy.test")
    policy = Path("/etc/postwarden/policies/10-deploy.toml")
    try:
        assert stat_of(key_dir) == (SERVICE_USER, SERVICE_USER, 0o750)
        assert stat_of(key_dir / "t1.key") == (SERVICE_USER, SERVICE_USER, 0o600)
        policy.write_text(
            f'[domains."deploy.test"]\nkeys = [{{ selector = "t1", file = "{key_dir}/t1.key" }}]\n'
        )
        policy.chmod(0o640)
        shutil.chown(policy, group=SERVICE_USER)
        assert "1 key(s)" in run(["runuser", "-u", SERVICE_USER, "--", PW, "check-config"]).stdout
        # A folder the service user cannot enter: root could read the key, the daemon not.
        shutil.chown(key_dir, user="root", group="root")
        res = run([PW, "check-config"], check=False)
        assert res.returncode == 78, res.stdout
        assert f"{key_dir}/t1.key: the service user {SERVICE_USER} cannot read it" in res.stdout
    finally:
        policy.unlink(missing_ok=True)
        shutil.rmtree(key_dir, ignore_errors=True)


# ---- README's install steps on a private mail server ------------------------------------------


def readme_line(prefix: str) -> str:
    """The one line of README's install section that begins with prefix (after indentation)."""
    section = README.split("## Installing on a mail server", 1)[1].split("\n## ", 1)[0]
    lines = [ln.strip() for ln in section.splitlines() if ln.strip().startswith(prefix)]
    assert len(lines) == 1, (prefix, lines)
    return lines[0]


def tmpfiles_dirs(path_map: dict[str, str]) -> None:
    """deploy/postfix/postwarden.tmpfiles.conf, each folder mapped into the private root."""
    for line in (REPO / "deploy/postfix/postwarden.tmpfiles.conf").read_text().splitlines():
        if line.startswith("d "):
            _, path, mode, user, group, _age = line.split()
            target = map_path(path, path_map)
            run(["install", "-d", "-o", user, "-g", group, "-m", mode, target])


@pytest.fixture(scope="module")
def server(package: dict[str, object]) -> Iterator[tuple[MailServer, Path, dict[str, str]]]:
    root = STACK_ROOT / uuid.uuid4().hex[:8]
    m = MailServer(root)
    path_map = {
        "/etc/postwarden": str(root / "etc" / "postwarden"),
        "/etc/postfix": str(m.conf_dir),
        "/var/spool/postfix": str(m.queue_dir),
        "/var/lib/postwarden": str(root / "state"),
        "/run/postwarden": str(root / "run"),
    }
    try:
        yield m, root, path_map
    finally:
        m.stop()
        shutil.rmtree(root, ignore_errors=True)
        if STACK_ROOT.exists() and not any(STACK_ROOT.iterdir()):
            STACK_ROOT.rmdir()


def test_readme_install_steps_on_a_private_mail_server(
    server: tuple[MailServer, Path, dict[str, str]],
) -> None:
    m, root, path_map = server
    pw_conf = Path(path_map["/etc/postwarden"]) / "postwarden.toml"
    conf = str(m.conf_dir)

    # Step 1 (the package) is the fixture; its folders, mapped, as tmpfiles and postinst make them.
    m.prepare_postfix()
    tmpfiles_dirs(path_map)
    for name in ("postwarden.toml", "policies/00-defaults.toml"):
        target = Path(map_path(f"/etc/postwarden/{name}", path_map))
        shutil.copy(f"/etc/postwarden/{name}", target)
        shutil.chown(target, group=SERVICE_USER)
        target.chmod(0o640)

    # Step 2: TLS (prepare_postfix made a certificate) and Dovecot's SASL socket for Postfix.
    assert "unix_listener /var/spool/postfix/private/auth" in README
    m.start_dovecot({"alice@example.com": "alice-pw", "bob@example.com": "bob-pw"})

    # Step 3: setup-postfix, shown first, then made; a second run changes nothing.
    services = [
        "--config-directory",
        conf,
        "--smtp-service",
        m.smtp_service(),
        "--submission-service",
        m.submission_service(),
        "--notice-service",
        "postwarden-notice",
    ]
    readme_line("postwarden setup-postfix --dry-run")
    dry = run([PW, "setup-postfix", "--dry-run", *services]).stdout
    assert "+main.cf: smtpd_milters = unix:/postwarden/postwarden.sock" in dry
    assert "(--dry-run)" in dry
    assert run(["postconf", "-c", conf, "-h", "smtpd_milters"]).stdout.strip() == ""
    made = run([PW, "setup-postfix", *services]).stdout
    assert made.replace("made; run `postfix reload`", "") == dry.replace("not made (--dry-run)", "")
    assert "nothing to change" in run([PW, "setup-postfix", *services]).stdout

    # Step 4: local_login_sender_maps exactly as README has it.
    maps = readme_line("postconf -e 'local_login_sender_maps")
    value = re.search(r"local_login_sender_maps = (.+)'$", maps)
    assert value
    run(["postconf", "-c", conf, "-e", f"local_login_sender_maps = {value.group(1)}"])

    # Step 5: postwarden.toml's [server], the admins to mail; step 6: a key and a policy file.
    text = pw_conf.read_text()
    text = re.sub(
        r'"(/[^"]*)"',
        lambda mo: f'"{map_path(mo.group(1), path_map)}"',
        text.replace("unix:/", "unix:@/"),
    ).replace("unix:@/var/spool/postfix", f"unix:{m.queue_dir}")
    text = text.replace('hostname = "mail.example.net"', f'hostname = "{m.sandbox.myhostname}"')
    text = text.replace('to = "syslog"', 'to = "stderr"')
    pw_conf.write_text(text)
    defaults = Path(map_path("/etc/postwarden/policies/00-defaults.toml", path_map))
    defaults.write_text(
        defaults.read_text().replace("notify = []", 'notify = ["postmaster@example.net"]')
    )
    keys = map_path("/etc/postwarden/keys", path_map)
    readme_line("postwarden keygen example.com --selector")
    run([PW, "--config", str(pw_conf), "keygen", "example.com", "--selector", "e2e", "--dir", keys])
    key_file = f"{keys}/example.com/e2e.key"
    policy = Path(map_path("/etc/postwarden/policies/10-domains.toml", path_map))
    draft = root / "10-domains.toml"
    draft.write_text(
        f'[domains."example.com"]\nkeys = [{{ selector = "e2e", file = "{key_file}" }}]\n\n'
        '[users."bob@example.com"]\nrate = { messages = ["2/minute"] }\n\n'
        '[local]\nsend_as = { "www-data" = ["contact@example.com"] }\n'
    )
    run(["install", "-m", "0640", "-g", SERVICE_USER, str(draft), str(policy)])

    # Step 7: check-config as root (which also checks the service user can read every key).
    assert "1 key(s)" in run([PW, "--config", str(pw_conf), "check-config"]).stdout

    # Step 8: the unit (ExecStartPre= and ExecStart= in its sandbox), then Postfix.
    m.start_milter(pw_conf, path_map)
    m.sandbox.start_sink()
    m.sandbox.start_postfix()

    db_path = Path(path_map["/var/lib/postwarden"]) / "postwarden.db"
    decisions = Decisions(m, db_path)
    records = records_for([load_key("example.com", "e2e", key_file, True)])

    # A signed delivery: alice through submission, SASL by Dovecot over TLS.
    out = swaks_submission(m, "alice@example.com", "alice-pw", "alice@example.com", "signed")
    qid = queued(out)
    row = decisions.one(qid)
    assert row["identity"] == "sasl:alice@example.com" and row["action"] == "accept"
    delivered = m.sink_message(qid)
    assert dkimpy_results(delivered, records) == [True]

    # A spoof refused.
    out = swaks_submission(m, "alice@example.com", "alice-pw", "ceo@example.com", "spoof", ok=False)
    assert "550 5.7.1" in out and "ceo@example.com" in out

    # A capped sender locked, its notice delivered by the sandboxed daemon.
    for i in range(3):
        out = swaks_submission(m, "bob@example.com", "bob-pw", "bob@example.com", f"cap {i}")
    held = decisions.one(queued(out))
    assert held["action"] == "quarantine", held
    assert m.sandbox.wait_for(
        lambda: m.sink_subject("postwarden: sasl:bob@example.com locked"), 60
    ), m.logs()
    assert "not sent" not in (root / "milter.log").read_text()
    notice = decisions.by_subject_prefix("postwarden: sasl:bob@example.com locked")
    assert [r["code"] for r in notice["reasons"]] == ["notice"], notice  # type: ignore[attr-defined]
    assert run(["pgrep", "-x", "postdrop"], check=False).stdout == ""

    # Web-form mail through sendmail(1) with local_login_sender_maps in force.
    form = b"From: contact@example.com\nTo: x@remote.test\nSubject: web form\n\nhello\n"
    res = m.sandbox.sendmail(form, "contact@example.com", ["x@remote.test"], user="www-data")
    assert res.returncode == 0, res.stderr
    m.sandbox.kick_pickup()
    assert m.sandbox.wait_for(lambda: m.sink_subject("web form"), 60), m.logs()
    row = decisions.by_subject("web form")
    assert (
        row["identity"] == "local:www-data" and row["action"] == "accept"
    )  # the [local] user its sender names
    assert dkimpy_results(m.sink_subject("web form") or b"", records) == [True]
    # An unlisted local user can no longer send at all; www-data only as itself.
    res = m.sandbox.sendmail(form, "nobody@example.com", ["x@remote.test"], user="nobody")
    assert res.returncode != 0 and b"not authorized" in res.stderr
    res = m.sandbox.sendmail(form, "ceo@example.com", ["x@remote.test"], user="www-data")
    assert res.returncode != 0 and b"not authorized" in res.stderr

    # SMTP from 127.0.0.1 to "port 25" without SASL: outbound and decided, not inbound.
    out = swaks(m.sandbox.smtp_port, ["--from", "ceo@example.com", "--header", "Subject: port 25"])
    row = decisions.one(queued(out))
    assert row["identity"] == "ip:127.0.0.1" and row["outbound"] is True, row
    assert dkimpy_results(m.sink_message(str(row["queue_id"])), records) == [True]

    # Owners and modes as README promises.
    sock = Path(map_path("/var/spool/postfix/postwarden/postwarden.sock", path_map))
    pid = Path(map_path("/run/postwarden/postwarden.pid", path_map))
    assert stat_of(sock) == (SERVICE_USER, "postfix", 0o660)
    assert stat_of(sock.parent) == (SERVICE_USER, "postfix", 0o750)
    assert stat_of(pid) == (SERVICE_USER, SERVICE_USER, 0o660)
    assert stat_of(pid.parent) == (SERVICE_USER, SERVICE_USER, 0o700)
    assert stat_of(db_path)[:2] == (SERVICE_USER, SERVICE_USER)
    assert stat_of(db_path)[2] & 0o007 == 0
    assert stat_of(db_path.parent) == (SERVICE_USER, SERVICE_USER, 0o700)
    assert stat_of(key_file) == (SERVICE_USER, SERVICE_USER, 0o600)
    assert stat_of(Path(key_file).parent) == (SERVICE_USER, SERVICE_USER, 0o750)
    assert stat_of(policy) == ("root", SERVICE_USER, 0o640)

    # The sandbox held: outside its paths, even a folder of its own is read-only to it.
    outside = root / "outside"
    run(["install", "-d", "-o", SERVICE_USER, "-m", "0700", str(outside)])
    probe = run(sandboxed(["sh", "-c", f"touch {outside}/x 2>&1 || true"], path_map))
    assert "Read-only file system" in probe.stdout
    assert m.stop_milter() == 0


def test_purge_leaves_the_machine_as_it_was(package: dict[str, object]) -> None:
    run(["dpkg", "--purge", "postwarden"])
    assert machine_state() == package


# ---- helpers -----------------------------------------------------------------------------------


def swaks(port: int, args: list[str], ok: bool = True) -> str:
    res = run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--to", "x@remote.test", *args],
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert (res.returncode == 0) == ok, res.stdout[-2000:]
    return res.stdout


def swaks_submission(
    m: MailServer, login: str, password: str, from_: str, subject: str, ok: bool = True
) -> str:
    return swaks(
        m.submission_port,
        [
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            login,
            "--auth-password",
            password,
            "--from",
            from_,
            "--header",
            f"Subject: {subject}",
        ],
        ok,
    )


def queued(swaks_output: str) -> str:
    found = re.findall(r"queued as ([0-9A-Za-z]+)", swaks_output)
    assert found, swaks_output[-1500:]
    return str(found[-1])


class Decisions:
    def __init__(self, m: MailServer, db: Path) -> None:
        self.m = m
        self.db = db

    def rows(self) -> list[dict[str, object]]:
        return queries.decisions(open_db(self.db, readonly=True), limit=None)

    def one(self, queue_id: str) -> dict[str, object]:
        self.m.sandbox.wait_for(lambda: [r for r in self.rows() if r["queue_id"] == queue_id], 20)
        rows = [r for r in self.rows() if r["queue_id"] == queue_id]
        assert len(rows) == 1, rows
        return rows[0]

    def by_subject_prefix(self, prefix: str) -> dict[str, object]:
        # The writer records a row after the reply: wait for it, then exactly one.
        def rows() -> list[dict[str, object]]:
            return [r for r in self.rows() if str(r["subject"]).startswith(prefix)]

        self.m.sandbox.wait_for(rows, 20)
        assert len(rows()) == 1, rows()
        return rows()[0]

    def by_subject(self, subject: str) -> dict[str, object]:
        def rows() -> list[dict[str, object]]:
            return [r for r in self.rows() if r["subject"] == subject]

        self.m.sandbox.wait_for(rows, 20)
        assert len(rows()) == 1, rows()
        return rows()[0]
