"""The metrics endpoint (issue 20): bounded labels, scrape-time gauges behind a cache, both
listeners, and the watch that mails the admin without Prometheus."""

from __future__ import annotations

import os
import re
import stat
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from postwarden import metrics
from postwarden.config import ConfigError, load_config
from postwarden.metrics import Cached, Collector, HoldScan, Metrics, Watch, held_reason
from postwarden.milter.notify import AdminNotice
from postwarden.policy.model import Action, Facts, LockSender, Reason, Verdict
from postwarden.sandbox import free_port
from postwarden.signing import Signature
from postwarden.store import open_db
from postwarden.store.migrations import migrate
from tests.helpers import write_config

SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def value(text: str, name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples(text) if n == name and lab == labels]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@dataclass
class FakeWriter:
    depth: int = 0
    dropped: int = 0
    failed: int = 0


@dataclass
class FakeNotifier:
    sent: int = 0
    failed: int = 0

    def __post_init__(self) -> None:
        self.told: list[AdminNotice] = []

    def tell(self, notice: AdminNotice) -> None:
        self.told.append(notice)


def verdict(action: Action, *keys: str, step: str = "", lock: bool = False) -> Verdict:
    reasons = tuple(Reason(k.split(".")[0], k.split(".")[1], action, "t") for k in keys)
    return Verdict(
        action=action,
        reasons=reasons,
        identity="sasl:victim-sender@example.com",
        step=step,
        effects=(LockSender("sasl:x", "messages 1/minute"),) if lock else (),
    )


def test_counters_by_action_reason_step_and_signature() -> None:
    m = Metrics()
    m.hosted(["example.com"])
    facts = Facts(mail_from="someone@example.com", rcpts=("a@remote.test",))
    sig = [Signature("example.com", "rsa2026", "rsa-sha256", "v")]
    m.observe(facts, verdict(Action.ACCEPT), 3.0, sig)
    m.observe(facts, verdict(Action.REJECT, "identity.not_allowed"), 1.0, [])
    m.observe(
        facts, verdict(Action.QUARANTINE, "rate.exceeded", "rate.locked_now", lock=True), 2, []
    )
    m.observe(facts, verdict(Action.TEMPFAIL, "milter.error", step="commit"), 9.0, [])
    text = generate_latest(m.registry).decode()
    assert value(text, "postwarden_decisions_total", action="accept") == 1
    assert value(text, "postwarden_decisions_total", action="reject") == 1
    assert value(text, "postwarden_decisions_total", action="quarantine") == 1
    assert value(text, "postwarden_decisions_total", action="tempfail") == 1
    assert (
        value(
            text,
            "postwarden_decision_reasons_total",
            reason="rate.locked_now",
            action="quarantine",
        )
        == 1
    )
    assert value(text, "postwarden_decision_errors_total", step="commit") == 1
    assert value(text, "postwarden_locks_total") == 1
    assert (
        value(text, "postwarden_signatures_total", domain="example.com", algorithm="rsa-sha256")
        == 1
    )
    assert value(text, "postwarden_decision_seconds_count") == 4
    assert value(text, "postwarden_decision_seconds_bucket", le="0.0025") == 2


def test_labels_never_name_a_sender_a_recipient_or_an_unknown_code() -> None:
    """Whatever a sender writes, a label is an action, a declared reason code, a step, a hosted
    domain or an algorithm: the series stay bounded."""
    m = Metrics()
    m.hosted(["example.com"])
    for i in range(200):
        sender = f"evil{i}@attacker{i}.test"
        facts = Facts(mail_from=sender, rcpts=(f"victim{i}@remote{i}.test",))
        v = Verdict(
            action=Action.REJECT,
            reasons=(Reason(f"check{i}", f"code{i}", Action.REJECT, sender),),
            identity=f"sasl:{sender}",
            from_address=sender,
        )
        m.observe(facts, v, 1.0, [Signature(f"attacker{i}.test", "s", "rsa-sha256", "v")])
    text = generate_latest(m.registry).decode()
    assert "evil" not in text and "attacker" not in text and "victim" not in text
    values = {v for _, labels, _ in samples(text) for k, v in labels.items() if k != "le"}
    allowed = {str(a) for a in Action} | {"ok", "refused", "other", "rsa-sha256"}
    assert values <= allowed, values - allowed
    assert value(text, "postwarden_decision_reasons_total", reason="other", action="reject") == 200
    assert value(text, "postwarden_signatures_total", domain="other", algorithm="rsa-sha256") == 200


def test_every_declared_reason_code_is_a_label() -> None:
    known = metrics.known_reasons()
    assert {"rate.exceeded", "rate.locked", "identity.not_allowed", "milter.error"} <= known


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [
        ('[{"check": "rate", "code": "locked", "action": "quarantine"}]', "rate.locked"),
        (
            '[{"check": "headers", "code": "x", "action": "accept"},'
            ' {"check": "rate", "code": "exceeded", "action": "quarantine"}]',
            "rate.exceeded",
        ),
        ("[]", "unknown"),
        ("not json", "unknown"),
        ('{"a": 1}', "unknown"),
    ],
)
def test_the_reason_a_message_is_held(reasons: str, expected: str) -> None:
    assert held_reason(reasons) == expected


def _config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(
        tmp_path,
        daemon_extra=f"[postfix]\nconfig_directory = '{tmp_path / 'no-postfix'}'\n{extra}",
    )


def test_gauges_at_scrape_time_behind_a_cache(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    db = open_db(cfg.daemon.store.database)
    migrate(db)
    with db.conn:
        db.execute("INSERT INTO locks VALUES ('sasl:a', '2026-01-01T00:00:00', 'c', 'Q')")
        db.execute(
            "INSERT INTO audit (time, actor, action, target) VALUES ('t', 'x', 'unlock', 's')"
        )
        db.execute(
            "INSERT INTO dns_checks (run_at, domain, area, status, message, fix) VALUES"
            " ('2026-01-01T00:00:00+00:00', 'example.com', 'spf', 'fail', 'm', 'f'),"
            " ('2026-01-01T00:00:00+00:00', 'example.com', 'dkim', 'pass', 'm', ''),"
            " ('2026-01-01T00:00:00+00:00', 'attacker.test', 'spf', 'fail', 'm', '')"
        )
    m = Metrics()
    clock = [0.0]
    cache = Cached(15.0, clock=lambda: clock[0])
    writer, notifier = FakeWriter(depth=7, dropped=2, failed=1), FakeNotifier(sent=3, failed=4)
    m.registry.register(Collector(lambda: cfg, writer, notifier, m, lambda: 5, cache))  # type: ignore[arg-type]
    text = generate_latest(m.registry).decode()
    assert value(text, "postwarden_writer_queue_depth") == 7
    assert value(text, "postwarden_writer_rows_dropped_total") == 2
    assert value(text, "postwarden_writer_rows_failed_total") == 1
    assert value(text, "postwarden_notices_sent_total") == 3
    assert value(text, "postwarden_notices_failed_total") == 4
    assert value(text, "postwarden_messages_in_flight") == 5
    assert value(text, "postwarden_locked_senders") == 1
    assert value(text, "postwarden_unlocks_total") == 1
    assert value(text, "postwarden_dns_check_findings", domain="example.com", status="fail") == 1
    assert value(text, "postwarden_dns_check_findings", domain="example.com", status="pass") == 1
    assert "attacker.test" not in text  # not hosted: no series
    assert value(text, "postwarden_hold_queue_up") == 0  # no Postfix in tmp_path
    assert cache.computed == 1  # the hold queue and the database, once, together
    for _ in range(50):  # a scrape storm within the cache's life asks neither again
        generate_latest(m.registry)
    assert cache.computed == 1
    clock[0] = 16.0
    generate_latest(m.registry)
    assert cache.computed == 2


def test_the_unix_listener_serves_the_registry_mode_0660(tmp_path: Path) -> None:
    m = Metrics()
    m.observe(Facts(), verdict(Action.ACCEPT), 1.0, [])
    path = tmp_path / "run" / "metrics.sock"
    endpoint = metrics.serve(f"unix:{path}", m.registry)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        text = metrics.scrape_unix(str(path))
        assert value(text, "postwarden_decisions_total", action="accept") == 1
    finally:
        endpoint.close()
    assert not path.exists()


def test_the_tcp_listener_is_prometheus_clients(tmp_path: Path) -> None:
    m = Metrics()
    port = free_port()
    endpoint = metrics.serve(f"127.0.0.1:{port}", m.registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        assert value(text, "postwarden_decisions_total", action="accept") == 0
    finally:
        endpoint.close()


@pytest.mark.parametrize("good", ["", "127.0.0.1:9617", "[::1]:9617", "unix:/run/x/m.sock"])
def test_listen_values_taken(tmp_path: Path, good: str) -> None:
    cfg = load_config(_config(tmp_path, f'[metrics]\nlisten = "{good}"\n'))
    assert cfg.daemon.metrics.listen == good
    assert cfg.daemon.metrics.notify_held_over == 1000


@pytest.mark.parametrize("bad", ["9617", "localhost:9617", "127.0.0.1:0", "unix:", "unix:rel"])
def test_listen_values_refused_naming_the_key(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, f'[metrics]\nlisten = "{bad}"\n'))
    assert any(
        "metrics.listen" in str(p) and "not a metrics listener" in str(p)
        for p in err.value.problems
    )


def test_the_watch_mails_once_per_crossing_and_once_per_loss(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "[metrics]\nnotify_held_over = 10\n"))
    scan = HoldScan(by_reason={"rate.locked": 11})
    writer, notifier = FakeWriter(), FakeNotifier()
    watch = Watch(lambda: cfg, writer, notifier, lambda: scan)  # type: ignore[arg-type]
    first = watch.look()
    assert [n.subject for n in first] == ["postwarden: 11 messages held"]
    assert "11 rate.locked" in first[0].body and "quarantine list" in first[0].body
    assert watch.look() == []  # still over: not again
    scan.by_reason = {"rate.locked": 5}
    assert watch.look() == []
    scan.by_reason = {"rate.locked": 12}
    assert len(watch.look()) == 1  # crossed again
    writer.dropped = 3
    lost = watch.look()
    assert [n.subject for n in lost] == ["postwarden: 3 decision rows lost"]
    assert watch.look() == []
    writer.failed = 1
    assert [n.subject for n in watch.look()] == ["postwarden: 1 decision rows lost"]
    assert len(notifier.told) == 4


def test_dmarc_pass_share_and_own_dkim_failures_from_the_stored_reports(tmp_path: Path) -> None:
    from postwarden.metrics import read_store
    from postwarden.reports.summary import readiness
    from tests.tui.seed import FROZEN
    from tests.tui.seed_reports import seed_reports

    cfg = load_config(seed_reports(tmp_path, "127.0.0.1:9"))
    view = read_store(cfg, FROZEN)
    ready = readiness(open_db(cfg.daemon.store.database), cfg, FROZEN)
    assert set(view.dmarc) == {"example.com", "example.net"}
    for domain, (messages, passed, own) in view.dmarc.items():
        r = ready[domain]
        assert (messages, passed, own) == (r.messages, r.passed, r.own_dkim_failures)
    messages, passed, own = view.dmarc["example.com"]
    assert own == 6  # one day's 3 DKIM failures of this server's own mail, in two reports
    assert 0.9 < passed / messages < 1
    m = Metrics()
    m.registry.register(
        Collector(lambda: cfg, FakeWriter(), FakeNotifier(), m, lambda: 0, Cached(15))  # type: ignore[arg-type]
    )
    text = generate_latest(m.registry).decode()  # now, not FROZEN: a share of what is in the window
    assert "postwarden_dmarc_pass_ratio" in text
