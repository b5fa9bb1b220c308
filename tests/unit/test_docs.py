"""Docs match the code: every config key and reason code is in policies/README.md, the example
policies load, every command has --help, the README says what the Makefile does."""

from __future__ import annotations

import re
import shutil
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from postwarden.cli import build_parser, main
from postwarden.config import load_config
from postwarden.config.loader import _strip
from postwarden.config.models import DaemonConfig, KeyRef, PolicyFile, RateOverride
from postwarden.policy.registry import checks
from tests.helpers import REPO, write_config, write_key

POLICY_README = (REPO / "policies" / "README.md").read_text()


def sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for block in re.split(r"^### ", text, flags=re.M)[1:]:
        heading, _, body = block.partition("\n")
        out[heading.strip()] = body
    return out


def model_keys(model: type[BaseModel]) -> dict[str, list[str]]:
    """Section heading -> keys, as policies/README.md names them."""
    found: dict[str, list[str]] = {}
    for name, info in model.model_fields.items():
        tp = _strip(info.annotation)
        if typing.get_origin(tp) is dict:
            inner = _strip(typing.get_args(tp)[1])
            heading = {"domains": '[domains."DOMAIN"]', "users": '[users."LOGIN"]'}.get(name)
            if heading and isinstance(inner, type) and issubclass(inner, BaseModel):
                found[heading] = list(inner.model_fields)
                continue
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found[f"[{name}]"] = list(tp.model_fields)
        else:
            found.setdefault("[top level]", []).append(name)
    return found


@pytest.mark.parametrize("model", [DaemonConfig, PolicyFile])
def test_every_config_key_is_documented_under_its_section(model: type[BaseModel]) -> None:
    docs = sections(POLICY_README)
    missing = [
        f"{heading} {key}"
        for heading, keys in model_keys(model).items()
        for key in keys
        if f"`{key}`" not in docs.get(heading, "")
    ]
    assert missing == []


def test_nested_key_fields_are_documented() -> None:
    domain_doc = sections(POLICY_README)['[domains."DOMAIN"]']
    for key in [*KeyRef.model_fields, *RateOverride.model_fields]:
        assert f"`{key}`" in domain_doc, key


def test_every_check_and_reason_code_is_documented() -> None:
    table = sections(POLICY_README)["Reason codes"]
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, re.M))
    declared = {f"{c.name}.{code}" for c in checks() for code in c.codes} | {"milter.error"}
    assert declared == documented


def test_every_check_file_is_registered() -> None:
    files = {p.stem for p in (REPO / "src/postwarden/policy/checks").glob("*.py")} - {"__init__"}
    modules = {c.fn.__module__.rsplit(".", 1)[-1] for c in checks()}
    assert files == modules


def test_example_policy_files_load(tmp_path: Path) -> None:
    """policies/example.toml (every key) and policies/demo.toml pass check-config."""
    cfg = write_config(tmp_path)
    (tmp_path / "policies" / "10-test.toml").unlink()
    example = (REPO / "policies" / "example.toml").read_text()
    keydir = tmp_path / "keys"
    for name in ("rsa2026", "rsa2027"):
        write_key(keydir / f"{name}.key")
    write_key(keydir / "ed2026.key", algorithm="ed25519")
    example = re.sub(r"/etc/postwarden/keys/example\.com/", f"{keydir}/", example)
    (tmp_path / "policies" / "10-example.toml").write_text(example)
    loaded = load_config(cfg)
    assert loaded.policy.users["alice@example.com"].bulk is True
    assert [k.active for k in loaded.keys["example.com"]] == [True, True, False]

    demo_dir = tmp_path / "demo"
    cfg = write_config(demo_dir)
    shutil.copy(REPO / "policies" / "demo.toml", demo_dir / "policies" / "10-test.toml")
    write_key(demo_dir / "policies" / "keys/example.com/rsa2026.key")
    write_key(demo_dir / "policies" / "keys/example.com/ed2026.key", algorithm="ed25519")
    assert set(load_config(cfg).policy.domains) == {"example.com", "example.net"}


def test_deployed_postwarden_toml_is_valid_but_for_its_paths(tmp_path: Path) -> None:
    text = (REPO / "deploy/postfix/postwarden.toml").read_text()
    keys = {k for k, _ in re.findall(r"^(\w+)\s*=\s*(.+)$", text, re.M)}
    for section, fields in model_keys(DaemonConfig).items():
        if section != "[top level]":
            assert set(fields) <= keys, section
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.toml").write_text('[domains."example.com"]\n')
    (tmp_path / "postwarden.toml").write_text(text.replace('"/etc/postwarden/policies"', '"p"'))
    assert load_config(tmp_path / "postwarden.toml").daemon.milter.on_error == "tempfail"


def _commands(parser: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import argparse

    out = []
    for action in getattr(parser, "_actions", []):
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((*prefix, name))
                out += _commands(sub, (*prefix, name))
    return out


@pytest.mark.parametrize("command", _commands(build_parser()), ids=" ".join)
def test_every_command_has_help(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: postwarden") and len(out.splitlines()) > 3


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_readme_shows_the_two_commands_and_why_src_layout() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme and "make demo-stop" in readme
    assert "pymilter owns the import name `milter`" in readme
    for cmd in ("check-config", "reload", "db migrate", "log", "tui"):
        assert f"postwarden {cmd}" in readme or f"`{cmd}" in readme, cmd
