"""keygen and import-opendkim: zone-file output, key files, and a migration that keeps the keys."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from postwarden.cli import main
from postwarden.config import load_config
from postwarden.signing import RelaxedBodyHasher, sign
from tests.dkim_verify import dkimpy_results, opendkim_results
from tests.helpers import write_config


def zone_txt(output: str, domain: str, selector: str) -> str:
    zone = dns.zone.from_text(output, origin=domain, check_origin=False)
    rdataset = zone.find_rdataset(f"{selector}._domainkey", dns.rdatatype.TXT)
    [rdata] = list(rdataset)
    assert all(len(s) <= 255 for s in rdata.strings)
    return b"".join(rdata.strings).decode()


@pytest.mark.parametrize(
    ("algorithm", "extra"), [("rsa", []), ("rsa", ["--bits", "3072"]), ("ed25519", [])]
)
def test_keygen_writes_a_0600_key_and_a_record_that_parses_and_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str, extra: list[str]
) -> None:
    assert (
        main(
            [
                "keygen",
                "example.com",
                "--selector",
                "s1",
                "--algorithm",
                algorithm,
                "--dir",
                str(tmp_path),
                *extra,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    path = tmp_path / "example.com" / "s1.key"
    assert path.stat().st_mode & 0o777 == 0o600
    record = zone_txt(out, "example.com", "s1")
    tags = dict(t.strip().split("=", 1) for t in record.split(";") if t.strip())
    assert tags["v"] == "DKIM1" and tags["k"] == algorithm
    # the public key in the record is the private key's own
    policy = write_config(
        tmp_path / "cfg",
        f'[domains."example.com"]\nkeys = [{{ selector = "s1", file = "{path}" }}]\n',
    )
    [key] = load_config(policy).keys["example.com"]
    assert tags["p"] == key.public_key_b64()
    if algorithm == "rsa":
        assert key.bits == (3072 if extra else 2048)
    else:
        assert len(base64.b64decode(tags["p"])) == 32
    assert f'{{ selector = "s1", file = "{path}", active = false }},' in out


def test_keygen_never_overwrites_and_refuses_weak_or_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["keygen", "example.com", "--selector", "s1", "--dir", str(tmp_path)]
    assert main(args) == 0
    before = (tmp_path / "example.com" / "s1.key").read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    assert "exists: choose another selector" in capsys.readouterr().err
    assert (tmp_path / "example.com" / "s1.key").read_bytes() == before
    assert (
        main(["keygen", "example.com", "--selector", "s2", "--bits", "512", "--dir", str(tmp_path)])
        == 1
    )
    assert "at least 1024 bits" in capsys.readouterr().err
    assert main(["keygen", "not a domain", "--selector", "s", "--dir", str(tmp_path)]) == 1
    assert main(["keygen", "example.com", "--selector", "a b", "--dir", str(tmp_path)]) == 1
    assert (
        main(
            [
                "keygen",
                "example.com",
                "--selector",
                "e",
                "--algorithm",
                "ed25519",
                "--bits",
                "2048",
                "--dir",
                str(tmp_path),
            ]
        )
        == 2
    )


def _opendkim_genkey(keys: Path, domain: str, selector: str) -> tuple[Path, str]:
    d = keys / domain
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["opendkim-genkey", "-D", str(d), "-d", domain, "-s", selector], check=True)
    # opendkim-genkey writes no TTL: give the parser a default.
    record = zone_txt("$TTL 3600\n" + (d / f"{selector}.txt").read_text(), domain, selector)
    return d / f"{selector}.private", record


def test_import_opendkim_keytable_keeps_the_published_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "opendkim" / "keys"
    com_key, com_txt = _opendkim_genkey(keys, "example.com", "mail")
    net_key, net_txt = _opendkim_genkey(keys, "example.net", "2025")
    etc = tmp_path / "opendkim"
    (etc / "KeyTable").write_text(
        f"# name  domain:selector:keyfile\ncom   example.com:mail:{com_key}\nnet   example.net:2025:{net_key}\n"
    )
    (etc / "SigningTable").write_text(
        "*@example.com   com\n*@*.example.net net\n*@example.net   net\n*@other.test com\n"
    )
    conf = etc / "opendkim.conf"
    conf.write_text(
        "Syslog yes\nKeyTable refile:/nonexistent\n".replace(
            "refile:/nonexistent", f"refile:{etc / 'KeyTable'}"
        )
        + f"SigningTable refile:{etc / 'SigningTable'}\nSocket local:/run/opendkim/opendkim.sock\n"
    )
    cfg = write_config(tmp_path / "pw", "")
    out = tmp_path / "pw" / "policies" / "20-imported.toml"
    assert main(["import-opendkim", "--conf", str(conf), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "*@other.test signs with d=example.com" in err  # cannot be expressed: said, not dropped
    (tmp_path / "pw" / "policies" / "10-test.toml").unlink()
    assert main(["--config", str(cfg), "check-config"]) == 0
    loaded = load_config(cfg)
    assert loaded.policy.domains["example.net"].include_subdomains is True
    assert loaded.policy.domains["example.com"].include_subdomains is False
    # It signs with the same keys: the records OpenDKIM's users already published verify it.
    published = {"mail._domainkey.example.com": com_txt, "2025._domainkey.example.net": net_txt}
    for domain in ("example.com", "example.net"):
        [key] = loaded.keys[domain]
        raw = f"From: a@{domain}\r\nSubject: migrated\r\n\r\nbody\r\n".encode()
        h = RelaxedBodyHasher()
        h.update(b"body\r\n")
        headers = [(b"From", f" a@{domain}".encode()), (b"Subject", b" migrated")]
        sig = sign(headers, h.digest_b64(), key, 1795400000)
        message = b"DKIM-Signature: " + sig.value.encode() + b"\r\n" + raw
        assert dkimpy_results(message, published) == [True]
        assert opendkim_results(message, published) == ["pass"]


def test_import_opendkim_single_key_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, _ = _opendkim_genkey(tmp_path / "keys", "example.org", "default")
    conf = tmp_path / "opendkim.conf"
    conf.write_text(f"Domain example.org, example.info\nSelector default\nKeyFile {key}\n")
    assert main(["import-opendkim", "--conf", str(conf)]) == 0
    out = capsys.readouterr().out
    assert '[domains."example.org"]' in out and '[domains."example.info"]' in out
    assert f'{{selector = "default", file = "{key}"}}' in out.replace(" }", "}").replace("{ ", "{")


def test_import_opendkim_bad_input_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["import-opendkim", "--conf", str(tmp_path / "missing.conf")]) == 78
    assert "missing.conf" in capsys.readouterr().err
    conf = tmp_path / "o.conf"
    conf.write_text("Syslog yes\n")
    assert main(["import-opendkim", "--conf", str(conf)]) == 78
    assert (
        "neither KeyTable and SigningTable nor Domain, Selector and KeyFile"
        in capsys.readouterr().err
    )
    conf.write_text("KeyTable db:/etc/keys.db\nSigningTable db:/etc/sign.db\n")
    assert main(["import-opendkim", "--conf", str(conf)]) == 78
    assert "only file:, refile: and csl: can be imported" in capsys.readouterr().err
