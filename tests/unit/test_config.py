"""The one loader: what each bad input gets (file, key path, a did-you-mean, every problem)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from postwarden.cli import main
from postwarden.config import ConfigError, load_config
from postwarden.config.models import Policy
from tests.helpers import BASIC_POLICY, SHARED, write_config, write_key

# cryptography refuses to generate keys this weak; made once with `openssl genpkey`.
RSA_512 = b"""-----BEGIN PRIVATE KEY-----
MIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEA0deFxoo5Xj/uhlgT
XUalOdoK5SoUTMA04O2ESYTpikp1ZYbTJlu1MqWRg3j/GgB8NLNUybNUhC5/hbze
T3QGEwIDAQABAkEAhbracGsKoHwR4OAkhx9MkQ/aPa2RflBH4si7s7bWtuAQlCBh
Rm44Hln8gLZ4jIw6znfZJcKJFxYeVGEgRakM8QIhAPrizM8RrYqN/i3WdXmwdvSI
sla7+AvGHTT9WV6Ijh0/AiEA1h6KwxRtDo4JKP0hkmmeRpkYyf42wvb6RdKFVFCU
ni0CID9RVhc8guvhAjFXWranjp4QkdHKBsQR7/Ubq55sIFHJAiBlMzREdaAB1BHy
RImciLzdAzkbJ0K8rTymyZRowFkt1QIgJwkbxbEdUBicTKrtbc1SEeHA9f8DE9zu
9Jddk05LbcU=
-----END PRIVATE KEY-----
"""


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def problems_of(cfg: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    return [str(p) for p in exc.value.problems]


def test_a_valid_config_loads_with_spec_defaults(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path))
    assert set(cfg.policy.domains) == {"example.com", "example.net"}
    assert cfg.daemon.milter.on_error == "tempfail"
    assert cfg.policy.defaults.unknown_from_domain == "reject"
    assert cfg.policy.rate.messages == ["30/minute", "500/hour", "2000/day"]
    assert cfg.daemon.store.database == str(tmp_path / "postwarden.db")  # relative to the file
    assert re.fullmatch(r"[0-9a-f]{12}", cfg.policy.hash)


# Keys of the spec whose features are not built yet (issues 14, 16, 17, 18, 19, 20 of this
# batch): the loader refuses them by name, never ignores them. A feature that lands takes its
# keys off this list, and the test below fails until it does.
NOT_BUILT: set[str] = set()  # every key of the spec is built


def test_the_spec_examples_parse_except_for_their_missing_key_files(tmp_path: Path) -> None:
    """Every key in ../shared/spec/config.md's two examples is known to the loader, but for
    the NOT_BUILT ones, each refused as an unknown key."""
    text = (SHARED / "spec" / "config.md").read_text()
    daemon_toml, policy_toml = re.findall(r"```toml\n(.*?)```", text, re.S)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "10-spec.toml").write_text(policy_toml)
    (tmp_path / "postwarden.toml").write_text(
        daemon_toml.replace('"/etc/postwarden/policies"', '"policies"')
    )
    problems = problems_of(tmp_path / "postwarden.toml")
    unknown = {p.split(": ")[1] for p in problems if ": unknown key" in p}
    assert unknown == NOT_BUILT
    rest = [p for p in problems if ": unknown key" not in p]
    # The spec's key files live in /etc/postwarden/keys, which a test machine does not have.
    assert rest and all("keys[" in p and "does not exist" in p for p in rest), rest


@pytest.mark.parametrize(
    ("daemon_extra", "policy", "expected"),
    [
        # an unknown key names the file, the key path and the key meant
        (
            "",
            '[defaults]\nunknown_from_domian = "accept"\n',
            'defaults.unknown_from_domian: unknown key (did you mean "unknown_from_domain"?)',
        ),
        (
            "[server]\nhostnme = 'mx.example.net'\n",
            BASIC_POLICY,
            'server.hostnme: unknown key (did you mean "hostname"?)',
        ),
        # a wrong type is not coerced
        ("[dns]\ntimeout = '5'\n", BASIC_POLICY, "dns.timeout: Input should be a valid number"),
        ("", "[bulk]\nrecipients = 0\n", "bulk.recipients: Input should be greater than 0"),
        # a value outside its set
        (
            "",
            '[defaults]\nalignment = "loose"\n',
            "defaults.alignment: Input should be 'relaxed' or 'strict'",
        ),
        (
            "",
            '[rate]\nmessages = ["30 per minute"]\n',
            'rate.messages[0]: "30 per minute" is not a rate',
        ),
        (
            "",
            '[domains."not a domain"]\n',
            'domains."not a domain": "not a domain" is not a domain name',
        ),
        (
            "",
            '[users."a@example.com"]\nsend_as = ["*@*"]\n',
            'users."a@example.com".send_as[0]: "*@*" is not a send_as pattern',
        ),
        (
            "[postfix]\nconfig_directory = 5\n",
            BASIC_POLICY,
            "postfix.config_directory: Input should be a valid string",
        ),
        ("", '[rate]\nnotify = ["postmaster"]\n', 'rate.notify[0]: "postmaster" is not an address'),
        ("", "[defaults\n", "not valid TOML"),
        # a missing key file is a load-time error, never a surprise when mail arrives
        (
            "",
            '[domains."example.com"]\nkeys = [{ selector = "s1", file = "missing.key" }]\n',
            'domains."example.com".keys[0].file: key file',
        ),
    ],
)
def test_each_bad_input_gets_its_error(
    tmp_path: Path, daemon_extra: str, policy: str, expected: str
) -> None:
    cfg = write_config(tmp_path, policy, daemon_extra=daemon_extra)
    problems = problems_of(cfg)
    assert any(expected in p for p in problems), problems
    assert all(p.split(":")[0].endswith((".toml",)) for p in problems), problems


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        '[defaults]\nunknown_from_domian = "accept"\n'
        '[domains."example.com"]\nkeys = [{ selector = "s", file = "nope.key" }]\n',
    )
    cfg.write_text(
        cfg.read_text().replace('on_error = "tempfail"', 'on_error = "drop"\nsoket = "x"')
    )
    problems = problems_of(cfg)
    assert len(problems) == 4, problems
    assert any("milter.on_error" in p for p in problems)
    assert any('milter.soket: unknown key (did you mean "socket"?)' in p for p in problems)
    assert any("unknown_from_domian" in p for p in problems)
    assert any("nope.key does not exist" in p for p in problems)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: write_key(p, mode=0o644), "readable by group or others (mode 0644)"),
        (lambda p: _write(p, RSA_512), "RSA key of 512 bits; at least 1024 needed"),
        (lambda p: _write(p, b"garbage\n"), "unknown key format"),
        (
            lambda p: _write(p, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            "not a readable PEM private key",
        ),
    ],
    ids=["world-readable", "512-bit", "garbage", "broken-pem"],
)
def test_bad_key_files_are_config_errors(tmp_path: Path, make: object, expected: str) -> None:
    (tmp_path / "policies").mkdir()
    make(tmp_path / "policies" / "k.key")  # type: ignore[operator]
    cfg = write_config(
        tmp_path, '[domains."example.com"]\nkeys = [{ selector = "s", file = "k.key" }]\n'
    )
    problems = problems_of(cfg)
    assert any(expected in p and "k.key" in p for p in problems), problems


def test_good_keys_load_and_a_short_rsa_key_warns(tmp_path: Path) -> None:
    write_key(tmp_path / "policies" / "rsa.key", bits=1024)
    write_key(tmp_path / "policies" / "ed.key", algorithm="ed25519")
    cfg = load_config(
        write_config(
            tmp_path,
            '[domains."example.com"]\nkeys = [{ selector = "r", file = "rsa.key" },'
            ' { selector = "e", file = "ed.key", active = false }]\n',
        )
    )
    algs = [(k.selector, k.algorithm, k.active) for k in cfg.keys["example.com"]]
    assert algs == [("r", "rsa", True), ("e", "ed25519", False)]
    assert any("1024 bits; 2048 is recommended" in str(w) for w in cfg.warnings)


def test_a_domain_defined_in_two_files_names_both(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "policies" / "20-more.toml").write_text('[domains."example.com"]\n[defaults]\n')
    (tmp_path / "policies" / "30-again.toml").write_text("[defaults]\n")
    problems = problems_of(cfg)
    assert any(
        "20-more.toml" in p and "already defined in" in p and "10-test.toml" in p for p in problems
    )
    assert any("30-again.toml: defaults: [defaults] is already defined in" in p for p in problems)


def test_missing_files_and_folders(tmp_path: Path) -> None:
    assert "file not found" in problems_of(tmp_path / "nope.toml")[0]
    cfg = write_config(tmp_path)
    for f in (tmp_path / "policies").iterdir():
        f.unlink()
    assert "no *.toml policy files" in problems_of(cfg)[0]


def test_hosted_domain_honours_include_subdomains() -> None:
    from postwarden.config.models import DomainPolicy

    p = Policy(domains={"a.test": DomainPolicy(), "b.test": DomainPolicy(include_subdomains=True)})
    assert p.hosted_domain("A.test") == "a.test"
    assert p.hosted_domain("x.a.test") is None
    assert p.hosted_domain("x.y.b.test") == "b.test"
    assert p.hosted_domain("notb.test") is None


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_config(tmp_path / "good")
    assert main(["--config", str(good), "check-config"]) == 0
    assert "ok: 1 policy file(s), 2 domain(s)" in capsys.readouterr().out
    bad = write_config(tmp_path / "bad", "[defaults]\nsend_az = []\n")
    assert main(["--config", str(bad), "check-config"]) == 78
    out = capsys.readouterr().out
    assert 'defaults.send_az: unknown key (did you mean "send_as"?)' in out
    assert "1 problem(s) found" in out


def test_postwarden_config_env_is_honoured(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "postwarden", "check-config"],
        env={"POSTWARDEN_CONFIG": str(cfg), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
