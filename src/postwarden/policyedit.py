"""Editing the policy files in place, for the TUI's Policy screen.

Edits go through tomlkit, so the admin's comments, order and layout survive: a value is only
rewritten when the form changed it. An edit is checked with the daemon's own loader (given
the new text before anything is written), written atomically, and then the running daemon is
asked to reload, exactly as `postwarden reload` does.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from postwarden.config import Config, load_config


class FormError(ValueError):
    """The form itself cannot be turned into TOML (the loader judges everything else)."""


@dataclass(frozen=True)
class Entry:
    kind: str  # defaults | user | domain
    name: str
    file: Path

    @property
    def label(self) -> str:
        return {
            "defaults": "[defaults]",
            "user": f"user {self.name}",
            "domain": f"domain {self.name}",
        }[self.kind]


@dataclass
class UserForm:
    login: str
    send_as: str = ""  # comma-separated; blank: the [defaults] send_as
    messages: str = ""  # comma-separated rates; blank: inherited
    recipients: str = ""
    bulk: bool = False


@dataclass
class DomainForm:
    name: str
    include_subdomains: bool = False
    keys: str = ""  # one key a line: "selector file [staged]"


@dataclass
class DefaultsForm:
    alignment: str = "relaxed"
    unknown_from_domain: str = "reject"
    send_as: str = "{login}"


Form = UserForm | DomainForm | DefaultsForm


def policy_files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("*.toml"))


def _parse(path: Path) -> Any:
    return tomlkit.parse(path.read_text())


def entries(folder: str | Path) -> list[Entry]:
    """[defaults], then every user and domain, each with the file that holds it."""
    files = policy_files(folder)
    out: list[Entry] = []
    defaults = None
    for path in files:
        try:
            doc = _parse(path)
        except (OSError, TOMLKitError):
            continue  # the loader reports it; nothing here to edit
        if "defaults" in doc and defaults is None:
            defaults = Entry("defaults", "", path)
        out += [Entry("user", str(name), path) for name in doc.get("users", {})]
        out += [Entry("domain", str(name), path) for name in doc.get("domains", {})]
    if defaults is None and files:
        defaults = Entry("defaults", "", files[0])
    out.sort(key=lambda e: (e.kind, e.name))
    return ([defaults] if defaults else []) + out


def home_for(folder: str | Path, kind: str) -> Path:
    """Where a new user or domain goes: the file that already holds such entries."""
    files = policy_files(folder)
    table = {"user": "users", "domain": "domains"}[kind]
    for path in files:
        try:
            if table in _parse(path):
                return path
        except (OSError, TOMLKitError):
            continue
    if not files:
        raise FormError(f"no policy files in {folder}")
    return files[0]


def _split(text: str) -> list[str]:
    return [part for part in (p.strip() for p in text.replace("\n", ",").split(",")) if part]


def _join(value: Any) -> str:
    return ", ".join(str(v) for v in value or [])


def read_form(entry: Entry) -> Form:
    doc = _parse(entry.file)
    if entry.kind == "defaults":
        d = doc.get("defaults", {})
        return DefaultsForm(
            alignment=str(d.get("alignment", "relaxed")),
            unknown_from_domain=str(d.get("unknown_from_domain", "reject")),
            send_as=_join(d.get("send_as", ["{login}"])),
        )
    if entry.kind == "user":
        u = doc["users"][entry.name]
        rate = u.get("rate", {})
        return UserForm(
            login=entry.name,
            send_as=_join(u.get("send_as")),
            messages=_join(rate.get("messages")),
            recipients=_join(rate.get("recipients")),
            bulk=bool(u.get("bulk", False)),
        )
    d = doc["domains"][entry.name]
    lines = []
    for ref in d.get("keys", []):
        line = f"{ref.get('selector', '')} {ref.get('file', '')}"
        lines.append(line + ("" if ref.get("active", True) else " staged"))
    return DomainForm(
        name=entry.name,
        include_subdomains=bool(d.get("include_subdomains", False)),
        keys="\n".join(lines),
    )


def _set(table: Any, key: str, value: Any, default: Any) -> None:
    """Write `value` only when it changed, and drop the key when it goes back to the default,
    so that an untouched key keeps its comment and formatting."""
    current = table.get(key, default)
    if _plain(current) == value:
        return
    if value == default:
        if key in table:
            del table[key]
        return
    table[key] = value


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value


def _keys(text: str) -> list[dict[str, Any]]:
    refs = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] not in ("staged", "active")):
            raise FormError(
                f'keys, line {n}: write "selector file", with "staged" after it for a key'
                f" published but not yet signing (got {line.strip()!r})"
            )
        ref: dict[str, Any] = {"selector": words[0], "file": words[1]}
        if len(words) == 3 and words[2] == "staged":
            ref["active"] = False
        refs.append(ref)
    return refs


def _table(parent: Any, key: str, *, super_table: bool = False) -> Any:
    if key not in parent:
        parent[key] = tomlkit.table(is_super_table=super_table)
    return parent[key]


def apply(text: str, form: Form) -> str:
    """The policy file's new text with the form applied."""
    try:
        doc = tomlkit.parse(text)
    except TOMLKitError as exc:
        raise FormError(f"the file is not valid TOML: {exc}") from None
    if isinstance(form, DefaultsForm):
        d = _table(doc, "defaults")
        _set(d, "alignment", form.alignment, "relaxed")
        _set(d, "unknown_from_domain", form.unknown_from_domain, "reject")
        _set(d, "send_as", _split(form.send_as), ["{login}"])
    elif isinstance(form, UserForm):
        if not form.login.strip():
            raise FormError("login: give the SASL login, like alice@example.com")
        users = _table(doc, "users", super_table=True)
        new = form.login.strip() not in users
        u = _table(users, form.login.strip())
        _set(u, "send_as", _split(form.send_as), [])
        _set(u, "bulk", form.bulk, False)
        messages, recipients = _split(form.messages), _split(form.recipients)
        if messages or recipients or "rate" in u:
            rate = u.get("rate")
            if rate is None:
                rate = u["rate"] = tomlkit.inline_table()
            _set(rate, "messages", messages, [])
            _set(rate, "recipients", recipients, [])
            if not rate:
                del u["rate"]
        if new:
            u.add(tomlkit.nl())  # a blank line before whatever table follows
    else:
        if not form.name.strip():
            raise FormError("domain: give the domain name, like example.com")
        domains = _table(doc, "domains", super_table=True)
        new = form.name.strip().lower() not in domains
        d = _table(domains, form.name.strip().lower())
        _set(d, "include_subdomains", form.include_subdomains, False)
        refs = _keys(form.keys)
        if _plain(d.get("keys", [])) != refs:
            if refs:
                array = tomlkit.array()
                for ref in refs:
                    item = tomlkit.inline_table()
                    item.update(ref)
                    array.append(item)
                d["keys"] = array.multiline(True)
            elif "keys" in d:
                del d["keys"]
        if new:
            d.add(tomlkit.nl())
    return tomlkit.dumps(doc)


def validate(config_path: str | Path, file: Path, text: str) -> Config:
    """The daemon's loader over the new text, key files included: the config the daemon
    would take, or ConfigError with every problem."""
    return load_config(config_path, validate_keys=True, overrides={file: text})


def save(file: Path, text: str) -> None:
    """Atomically, keeping the file's mode: the daemon never reads half a file."""
    mode = file.stat().st_mode & 0o7777 if file.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, file)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise
