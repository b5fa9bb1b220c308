"""dns-check against a real DNS server on loopback (dnslib): every finding passing and failing,
each failure with its fix; timeouts and SERVFAIL are "unknown"; DNS switched off is exit 75."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from postwarden.cli import main
from postwarden.config import load_config
from postwarden.dnsdoctor import Finding, run
from postwarden.keytools import txt_record
from tests.dnsserver import LoopbackDNS, txt
from tests.helpers import write_config, write_key

DOMAINS = [
    "good.test",
    "nospf.test",
    "twospf.test",
    "badsyntax.test",
    "toomany.test",
    "voids.test",
    "neutral.test",
    "plusall.test",
    "norecord.test",
    "revoked.test",
    "mismatch.test",
    "sub.org.test",
    "nop.test",
    "pnone.test",
    "servfail.test",
    "twodmarc.test",
    "kbad.test",
]
SERVER = "192.0.2.10"


def _policy(keydir: Path) -> str:
    keys = {
        "good.test": [("s1", "rsa", True), ("ed1", "ed25519", True), ("staged", "rsa", False)],
        "norecord.test": [("s1", "rsa", True), ("later", "ed25519", False)],
        "revoked.test": [("s1", "rsa", True)],
        "mismatch.test": [("s1", "ed25519", True)],
        "kbad.test": [("s1", "rsa", True)],
    }
    out = []
    for d in DOMAINS:
        out.append(f'[domains."{d}"]')
        entries = [
            f'{{ selector = "{s}", file = "{write_key(keydir / d / f"{s}.key", algorithm=a)}", active = {str(act).lower()} }}'
            for s, a, act in keys.get(d, [])
        ]
        if entries:
            out.append("keys = [" + ", ".join(entries) + "]")
    return "\n".join(out) + "\n"


def _zone(cfg_keys: dict[str, list]) -> str:  # type: ignore[type-arg]
    k = {(key.domain, key.selector): key for keys in cfg_keys.values() for key in keys}

    def dkim(domain: str, selector: str, p: str | None = None) -> str:
        key = k[(domain, selector)]
        value = f"v=DKIM1; k={key.algorithm}; p={key.public_key_b64() if p is None else p}"
        return txt(f"{selector}._domainkey.{domain}.", value)

    spf_ok = f"v=spf1 ip4:{SERVER} -all"
    dmarc_ok = "v=DMARC1; p=reject; rua=mailto:d@good.test"
    lines = [
        # good.test: everything right
        txt("good.test.", spf_ok),
        txt("good.test.", "google-site-verification=abc"),
        dkim("good.test", "s1"),
        dkim("good.test", "ed1"),
        dkim("good.test", "staged"),
        txt("_dmarc.good.test.", dmarc_ok),
        "good.test. 300 IN MX 10 mail.example.net.",
        # SPF problems
        "nospf.test. 300 IN A 192.0.2.99",
        txt("twospf.test.", spf_ok),
        txt("twospf.test.", "v=spf1 mx -all"),
        txt(
            "badsyntax.test.",
            "v=spf1 ip4:192.0.2.300 ip6:2001:db8::zz foo:bar redirect=good.test -all",
        ),
        txt(
            "toomany.test.",
            "v=spf1 "
            + " ".join(f"include:i{i}.good.test" for i in range(11))
            + f" ip4:{SERVER} -all",
        ),
        *[txt(f"i{i}.good.test.", "v=spf1 -all") for i in range(11)],
        txt(
            "voids.test.", f"v=spf1 include:nx1.test include:nx2.test a:nx3.test ip4:{SERVER} -all"
        ),
        txt("neutral.test.", "v=spf1 ?all"),
        txt("plusall.test.", "v=spf1 +all"),
        # DKIM problems
        txt("norecord.test.", spf_ok),
        txt("revoked.test.", spf_ok),
        dkim("revoked.test", "s1", p=""),
        txt("mismatch.test.", spf_ok),
        dkim("mismatch.test", "s1", p=k[("good.test", "ed1")].public_key_b64()),
        txt("kbad.test.", spf_ok),
        txt(
            "s1._domainkey.kbad.test.",
            f"v=DKIM2; k=ed25519; p={k[('kbad.test', 's1')].public_key_b64()}",
        ),
        # DMARC: from the organisational domain; no p=; p=none without rua; two records
        txt("sub.org.test.", spf_ok),
        txt("_dmarc.org.test.", "v=DMARC1; p=quarantine; sp=reject; rua=mailto:r@org.test"),
        "org.test. 300 IN A 192.0.2.1",
        txt("nop.test.", spf_ok),
        txt("_dmarc.nop.test.", "v=DMARC1; rua=mailto:r@nop.test"),
        txt("pnone.test.", spf_ok),
        txt("_dmarc.pnone.test.", "v=DMARC1; p=none"),
        txt("twodmarc.test.", spf_ok),
        txt("_dmarc.twodmarc.test.", dmarc_ok),
        txt("_dmarc.twodmarc.test.", "v=DMARC1; p=none"),
        # the server: PTR and forward
        "10.2.0.192.in-addr.arpa. 300 IN PTR mail.example.net.",
        f"mail.example.net. 300 IN A {SERVER}",
        "11.2.0.192.in-addr.arpa. 300 IN PTR wrong.example.net.",
        "12.2.0.192.in-addr.arpa. 300 IN PTR mail.example.net.",
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, list[Finding]], list[Finding]]:
    root = tmp_path_factory.mktemp("dns")
    keys = root / "keys"
    policy = _policy(keys)
    cfg_path = write_config(root, policy)
    zone = _zone(load_config(cfg_path).keys)
    dns_server = LoopbackDNS(zone, servfail=["servfail.test"]).__enter__()
    cfg_path.write_text(
        cfg_path.read_text()
        + f'[server]\nhostname = "mail.example.net"\naddresses = ["{SERVER}"]\n'
        + f'[dns]\nnameservers = ["{dns_server.address}"]\ntimeout = 2.0\n'
    )
    report = run(load_config(cfg_path))
    return cfg_path, report.domains, report.server


def status(findings: list[Finding], area: str, needle: str) -> str:
    matches = [f for f in findings if f.area == area and needle in f.message]
    assert matches, f"no {area} finding containing {needle!r}: {findings}"
    return matches[0].status


def test_a_good_domain_passes_everything(setup) -> None:  # type: ignore[no-untyped-def]
    _, domains, server = setup
    good = domains["good.test"]
    assert {f.status for f in good} == {"pass"}, [f for f in good if f.status != "pass"]
    assert status(good, "spf", "check_host(192.0.2.10) = pass") == "pass"
    assert status(good, "dkim", "s1 (active rsa, 2048 bits)") == "pass"
    assert status(good, "dkim", "staged (staged rsa") == "pass"  # a staged key that is published
    assert status(good, "dmarc", "p=reject, sp=reject (inherits p)") == "pass"
    assert status(good, "mx", "MX mail.example.net") == "pass"
    assert [f.status for f in server] == [
        "pass"
    ] and "192.0.2.10 -> mail.example.net -> 192.0.2.10" in server[0].message


@pytest.mark.parametrize(
    ("domain", "area", "needle", "expected", "fix"),
    [
        (
            "nospf.test",
            "spf",
            "no SPF record",
            "fail",
            'nospf.test. IN TXT "v=spf1 ip4:192.0.2.10 -all"',
        ),
        ("twospf.test", "spf", "2 SPF records", "fail", "publish one record that merges them"),
        (
            "badsyntax.test",
            "spf",
            '"ip4:192.0.2.300": "192.0.2.300" is not an IPv4 address',
            "fail",
            "v=spf1",
        ),
        (
            "badsyntax.test",
            "spf",
            '"ip6:2001:db8::zz": "2001:db8::zz" is not an IPv6 address',
            "fail",
            "v=spf1",
        ),
        ("badsyntax.test", "spf", 'unknown mechanism "foo"', "fail", "v=spf1"),
        (
            "badsyntax.test",
            "spf",
            '"redirect=good.test" is never used: the record also has "all"',
            "fail",
            "v=spf1",
        ),
        ("toomany.test", "spf", "11 DNS-querying terms", "fail", "ip4:/ip6:"),
        ("voids.test", "spf", "3 void lookups", "fail", "remove the include"),
        ("neutral.test", "spf", "?all: mail from anywhere is neutral", "warn", "use ~all or -all"),
        (
            "neutral.test",
            "spf",
            "check_host(192.0.2.10) = neutral",
            "fail",
            'neutral.test. IN TXT "v=spf1 ip4:192.0.2.10 -all"',
        ),
        (
            "plusall.test",
            "spf",
            "+all authorises every host",
            "fail",
            'plusall.test. IN TXT "v=spf1 ip4:192.0.2.10 -all"',
        ),
        (
            "norecord.test",
            "dkim",
            "s1 (active rsa): no record at s1._domainkey.norecord.test",
            "fail",
            "s1._domainkey\t3600\tIN\tTXT",
        ),
        ("norecord.test", "dkim", "later (staged ed25519): no record", "warn", "k=ed25519"),
        ("revoked.test", "dkim", "p= is empty: the key is revoked", "fail", "s1._domainkey"),
        (
            "mismatch.test",
            "dkim",
            "p= does not match the private key on disk",
            "fail",
            "s1._domainkey",
        ),
        (
            "kbad.test",
            "dkim",
            "v=DKIM2 (must be DKIM1); k=ed25519 but the key on disk is rsa",
            "fail",
            "k=rsa",
        ),
        (
            "nospf.test",
            "dmarc",
            "no DMARC record at _dmarc.nospf.test",
            "fail",
            '_dmarc.nospf.test. IN TXT "v=DMARC1; p=quarantine',
        ),
        (
            "sub.org.test",
            "dmarc",
            "p=quarantine, sp=reject (from the organisational domain org.test)",
            "pass",
            "",
        ),
        ("nop.test", "dmarc", "p= is missing or invalid", "fail", "v=DMARC1; p=quarantine"),
        ("pnone.test", "dmarc", "p=none: monitoring only", "warn", "p=quarantine"),
        ("pnone.test", "dmarc", "no rua=", "warn", "rua=mailto:dmarc-reports@pnone.test"),
        ("twodmarc.test", "dmarc", "2 DMARC records", "fail", "v=DMARC1"),
        ("nospf.test", "mx", "no MX", "warn", "nospf.test. IN MX 10 mail.example.net."),
        ("servfail.test", "spf", "no answer", "unknown", ""),
        ("servfail.test", "dmarc", "no answer", "unknown", ""),
    ],
)
def test_each_finding_and_its_fix(
    setup, domain: str, area: str, needle: str, expected: str, fix: str
) -> None:  # type: ignore[no-untyped-def]
    _, domains, _ = setup
    matches = [f for f in domains[domain] if f.area == area and needle in f.message]
    assert matches, f"{domain}: no {area} finding with {needle!r}: {domains[domain]}"
    assert matches[0].status == expected
    assert fix in matches[0].fix
    if expected == "fail":
        assert matches[0].fix


def test_every_failure_has_a_fix_and_servfail_is_never_a_failure(setup) -> None:  # type: ignore[no-untyped-def]
    _, domains, _ = setup
    assert all(f.fix for fs in domains.values() for f in fs if f.status == "fail")
    assert "fail" not in {f.status for f in domains["servfail.test"]}


def test_dkim_fix_is_the_record_made_from_the_key(setup) -> None:  # type: ignore[no-untyped-def]
    cfg_path, domains, _ = setup
    [key] = [k for k in load_config(cfg_path).keys["revoked.test"]]
    assert [f.fix for f in domains["revoked.test"] if f.area == "dkim"] == [txt_record(key)]


def test_ptr_and_fcrdns_failures(setup, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg_path, _, _ = setup
    text = cfg_path.read_text().replace(
        f'addresses = ["{SERVER}"]', 'addresses = ["192.0.2.11", "192.0.2.12"]'
    )
    other = tmp_path / "postwarden.toml"
    other.write_text(
        text.replace('policies = "policies"', f'policies = "{cfg_path.parent / "policies"}"')
    )
    report = run(load_config(other), ["good.test"])
    ptr = {f.message: f for f in report.server}
    assert ptr["PTR of 192.0.2.11 is wrong.example.net, not mail.example.net"].status == "fail"
    assert (
        "set its PTR to mail.example.net"
        in ptr["PTR of 192.0.2.11 is wrong.example.net, not mail.example.net"].fix
    )
    assert (
        ptr["mail.example.net does not resolve back to 192.0.2.12 (FCrDNS)"].fix
        == "mail.example.net. IN A 192.0.2.12"
    )


def test_cli_text_json_exit_codes_and_stored_results(
    setup, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    cfg_path, _, _ = setup
    assert main(["--config", str(cfg_path), "dns-check", "good.test"]) == 0
    out = capsys.readouterr().out
    assert (
        out.splitlines()[0] == "good.test"
        and "  PASS  spf    one record: v=spf1 ip4:192.0.2.10 -all" in out
    )
    assert out.rstrip().endswith("1 domain(s): 11 pass, 0 warn, 0 fail, 0 unknown")
    assert main(["--config", str(cfg_path), "dns-check", "norecord.test"]) == 1  # something fails
    out = capsys.readouterr().out
    assert (
        "  FAIL  dkim   s1 (active rsa): no record at s1._domainkey.norecord.test\n        fix: s1._domainkey\t3600\tIN\tTXT"
        in out
    )
    assert main(["--config", str(cfg_path), "dns-check", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert set(doc["domains"]) == set(DOMAINS) and doc["summary"]["fail"] > 0
    assert doc["domains"]["nospf.test"][0] == {
        "area": "spf",
        "status": "fail",
        "message": "no SPF record",
        "fix": 'nospf.test. IN TXT "v=spf1 ip4:192.0.2.10 -all"',
    }
    assert main(["--config", str(cfg_path), "dns-check", "elsewhere.test"]) == 2
    from postwarden.store import open_db

    db = open_db(load_config(cfg_path).daemon.store.database)
    runs = db.execute("SELECT COUNT(DISTINCT run_at), COUNT(*) FROM dns_checks").fetchone()
    assert runs[0] == 3 and runs[1] > 50


def test_dns_switched_off_exits_75(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from postwarden.sandbox import free_port

    cfg = write_config(tmp_path, '[domains."good.test"]\n')
    cfg.write_text(
        cfg.read_text() + f'[server]\nhostname = "mail.example.net"\naddresses = ["{SERVER}"]\n'
        f'[dns]\nnameservers = ["127.0.0.1:{free_port()}"]\ntimeout = 0.5\n'
    )
    started = time.monotonic()
    assert main(["--config", str(cfg), "dns-check"]) == 75
    # Said within about one timeout (0.5 s), not after every query has timed out.
    assert time.monotonic() - started < 2
    err = capsys.readouterr().err
    assert "postwarden dns-check: 1 domain(s), asking 127.0.0.1:" in err
    assert "DNS is unreachable: no answer from 127.0.0.1:" in err and "within 0.5 s" in err
