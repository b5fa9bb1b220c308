"""dns-check --notify-changes: what counts as a change (the e2e test mails one through Postfix)."""

from __future__ import annotations

from postwarden.dnsdoctor.changes import changes, notice
from postwarden.dnsdoctor.doctor import Finding, Report
from postwarden.store import open_db
from postwarden.store.metrics import last_known_dns
from postwarden.store.migrations import migrate
from postwarden.store.records import add_dns_findings


def report(**domains: list[Finding]) -> Report:
    return Report(checked_at="2026-12-01T00:00:00+00:00", domains=dict(domains))


PASS = Finding("spf", "pass", "one record")
FAIL = Finding(
    "spf", "fail", "check_host(192.0.2.1) = fail", 'a.test. IN TXT "v=spf1 ip4:192.0.2.1 -all"'
)
UNKNOWN = Finding("spf", "unknown", "no answer (timeout): not judged; run again later")


def test_a_first_run_mails_what_is_wrong_and_not_what_is_right() -> None:
    assert changes({}, report(**{"a.test": [PASS]})) == []
    found = changes({}, report(**{"a.test": [PASS, FAIL]}))
    assert [(c.domain, c.area, c.before, c.after) for c in found] == [
        ("a.test", "spf", "pass", "fail")
    ]


def test_unknown_is_never_a_change_and_mended_is() -> None:
    was_failing = {("a.test", "spf"): "fail"}
    assert changes(was_failing, report(**{"a.test": [UNKNOWN]})) == []
    assert changes(was_failing, report(**{"a.test": [FAIL]})) == []
    mended = changes(was_failing, report(**{"a.test": [PASS]}))
    assert [(c.before, c.after, c.findings) for c in mended] == [("fail", "pass", ())]
    subject, body = notice(mended, "t")
    assert subject == "postwarden: DNS changed for a.test" and "mended" in body


def test_the_last_known_status_skips_unknown_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = open_db(tmp_path / "db")
    migrate(db)
    add_dns_findings(
        db, "2026-01-01", [("a.test", "spf", "fail", "m", "f"), ("a.test", "mx", "pass", "m", "")]
    )
    add_dns_findings(
        db, "2026-01-02", [("a.test", "spf", "unknown", "m", ""), ("a.test", "mx", "warn", "m", "")]
    )
    assert last_known_dns(db) == {("a.test", "spf"): "fail", ("a.test", "mx"): "warn"}


def test_the_mail_names_the_domain_the_failure_and_the_fix_and_escapes_dns_text() -> None:
    hostile = Finding("spf", "fail", "record \x1b[31mred", "fix\x07")
    subject, body = notice(changes({}, report(**{"a.test": [FAIL, hostile]})), "t")
    assert "a.test" in subject
    assert "spf: was pass, now FAIL" in body and "check_host(192.0.2.1) = fail" in body
    assert 'fix: a.test. IN TXT "v=spf1 ip4:192.0.2.1 -all"' in body
    assert "\x1b" not in body and "\x07" not in body
    assert body.rstrip().endswith("postwarden dns-check a.test")
