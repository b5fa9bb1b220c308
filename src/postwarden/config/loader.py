"""Load and validate postwarden.toml, the policy files and the key files in one pass.

Every problem is collected, never just the first: an admin fixing a config wants the whole
list. Each names the file, the key path and, where a known key is close, the one meant.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from postwarden.config.keys import KeyProblem, LoadedKey, load_key
from postwarden.config.models import (
    SINGLETON_SECTIONS,
    DaemonConfig,
    Policy,
    PolicyFile,
)

DEFAULT_CONFIG = "/etc/postwarden/postwarden.toml"


@dataclass(frozen=True)
class Problem:
    file: str
    key: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{prefix}{where}{self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonConfig
    policy: Policy
    keys: dict[str, list[LoadedKey]] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("POSTWARDEN_CONFIG") or DEFAULT_CONFIG)


def format_key(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if (
            part == "[key]"
        ):  # pydantic's marker for "the dict key itself": the path already names it
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if part.replace("_", "").replace("-", "").isalnum() else f'"{part}"'
            out += f".{name}" if out else name
    return out


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] and X | None -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _step(tp: Any, step: str | int) -> Any:
    """The type found one step into `tp`: a model field, a list item or a dict value."""
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        info = tp.model_fields.get(str(step))
        return info.annotation if info else None
    if typing.get_origin(tp) is list:
        return typing.get_args(tp)[0]
    if typing.get_origin(tp) is dict:
        return typing.get_args(tp)[1]
    return None


def _known_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    tp: Any = model
    for step in loc:
        tp = _step(tp, step)
        if tp is None:
            return []
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _validation_problems(
    file: str, model: type[BaseModel], exc: ValidationError, prefix: tuple[str | int, ...] = ()
) -> list[Problem]:
    problems = []
    for err in exc.errors():
        loc = prefix + tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            name = str(loc[-1])
            known = _known_keys(model, loc[len(prefix) : -1])
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            msg = "unknown key" + (f' (did you mean "{close[0]}"?)' if close else "")
            if known and not close:
                msg += f"; known keys: {', '.join(known)}"
        elif "input" in err and err["type"] != "missing":
            msg += f" (got {err['input']!r})"
        problems.append(Problem(file, format_key(loc), msg))
    return problems


def _read_toml(
    path: Path, problems: list[Problem], text: str | None = None
) -> dict[str, Any] | None:
    try:
        if text is not None:
            return tomllib.loads(text)
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(Problem(str(path), "", "file not found"))
    except PermissionError:
        problems.append(Problem(str(path), "", "cannot read the file: permission denied"))
    except tomllib.TOMLDecodeError as exc:
        problems.append(Problem(str(path), "", f"not valid TOML: {exc}"))
    return None


def _resolve(base: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else (base / p).resolve())


def load_daemon_config(path: Path, problems: list[Problem]) -> DaemonConfig | None:
    raw = _read_toml(path, problems)
    if raw is None:
        return None
    try:
        cfg = DaemonConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_validation_problems(str(path), DaemonConfig, exc))
        return None
    base = path.parent
    # [store].shared_password_file (issue 19): relative to postwarden.toml, and readable.
    password_file = (
        _resolve(base, cfg.store.shared_password_file) if cfg.store.shared_password_file else ""
    )
    if password_file and not os.access(password_file, os.R_OK):
        problems.append(
            Problem(str(path), "store.shared_password_file", f"cannot read {password_file}")
        )
    # Relative paths are relative to postwarden.toml, so a config folder can be moved whole.
    return cfg.model_copy(
        update={
            "policies": _resolve(base, cfg.policies),
            "store": cfg.store.model_copy(
                update={
                    "database": _resolve(base, cfg.store.database),
                    "shared_password_file": password_file,
                }
            ),
            "milter": cfg.milter.model_copy(update={"pidfile": _resolve(base, cfg.milter.pidfile)}),
        }
    )


def load_policy(
    daemon: DaemonConfig,
    problems: list[Problem],
    warnings: list[Problem],
    validate_keys: bool = True,
    overrides: dict[Path, str] | None = None,
) -> tuple[Policy | None, dict[str, list[LoadedKey]]]:
    folder = Path(daemon.policies)
    if not folder.is_dir():
        problems.append(Problem(str(folder), "", "the policies folder does not exist"))
        return None, {}
    files = sorted(folder.glob("*.toml"))
    if not files:
        problems.append(Problem(str(folder), "", "no *.toml policy files in the policies folder"))
        return None, {}

    digest = hashlib.sha256()
    digest.update(repr(sorted(daemon.milter.outbound)).encode())
    merged: dict[str, Any] = {"domains": {}, "users": {}}
    owner: dict[str, str] = {}
    # [domains] and [users] names, compared without regard to case: (table, lower name) ->
    # (file, the name as written there).
    named: dict[tuple[str, str], tuple[str, str]] = {}
    keys: dict[str, list[LoadedKey]] = {}
    edited = {p.resolve(): text for p, text in (overrides or {}).items()}
    present = {p.resolve() for p in files}
    files = sorted(files + [p for p in edited if p not in present and p.parent == folder.resolve()])
    for path in files:
        text = edited.get(path.resolve())
        raw = _read_toml(path, problems, text)
        if raw is None:
            continue
        content = text.encode() if text is not None else path.read_bytes()
        digest.update(path.name.encode() + b"\0" + content + b"\0")
        _check_keys(path, raw, problems, warnings, keys, validate_keys)
        duplicate = _duplicate_names(path, raw, named, problems)
        try:
            parsed = PolicyFile.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_validation_problems(str(path), PolicyFile, exc))
            continue
        for section in SINGLETON_SECTIONS:
            value = getattr(parsed, section)
            if value is None:
                continue
            if section in owner:
                problems.append(
                    Problem(
                        str(path), section, f"[{section}] is already defined in {owner[section]}"
                    )
                )
            owner[section] = str(path)
            merged[section] = value
        if duplicate:
            continue
        for table in ("domains", "users"):
            for name, entry in getattr(parsed, table).items():
                key = f'{table}."{name}"'
                if key in owner:
                    problems.append(
                        Problem(
                            str(path),
                            key,
                            f"{table[:-1]} {name} is already defined in {owner[key]}",
                        )
                    )
                    continue
                owner[key] = str(path)
                merged[table][name] = entry
    if problems:
        return None, {}
    merged = {k: v for k, v in merged.items() if v is not None}
    policy = Policy(**merged, outbound=list(daemon.milter.outbound), hash=digest.hexdigest()[:12])
    return policy, keys


def _duplicate_names(
    path: Path,
    raw: dict[str, Any],
    named: dict[tuple[str, str], tuple[str, str]],
    problems: list[Problem],
) -> bool:
    """A [domains] or [users] name defined twice, in this file or an earlier one, in any case:
    a problem naming both places. (The models store names in lower case, so two spellings
    would otherwise merge silently, the last one winning.) Whether there was one."""
    found = False
    for table in ("domains", "users"):
        entries = raw.get(table)
        if not isinstance(entries, dict):
            continue
        for name in entries:
            key = (table, name.lower().rstrip(".") if table == "domains" else name.lower())
            if key in named:
                first_file, first_name = named[key]
                where = "this file" if first_file == str(path) else first_file
                problems.append(
                    Problem(
                        str(path),
                        format_key((table, name)),
                        f'{table[:-1]} "{name}" is already defined in {where} as '
                        f'[{table}."{first_name}"] (names are compared without regard to case)',
                    )
                )
                found = True
            else:
                named[key] = (str(path), name)
    return found


def _fallback_for_policies(path: Path) -> DaemonConfig | None:
    """When postwarden.toml itself is invalid, still check the policy files it names, so that
    one run of check-config lists every problem."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    policies = raw.get("policies", DaemonConfig().policies)
    if not isinstance(policies, str):
        return None
    return DaemonConfig(policies=_resolve(path.parent, policies))


def _check_keys(
    path: Path,
    raw: dict[str, Any],
    problems: list[Problem],
    warnings: list[Problem],
    keys: dict[str, list[LoadedKey]],
    validate: bool = True,
) -> None:
    """Load every key file named under [domains], read from the raw TOML so that a key problem
    is reported even when something else in the same file is wrong."""
    domains = raw.get("domains")
    if not isinstance(domains, dict):
        return
    for name, dom in domains.items():
        refs = dom.get("keys") if isinstance(dom, dict) else None
        if not isinstance(refs, list):
            continue
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict) or not isinstance(ref.get("file"), str):
                continue  # the model reports the shape
            key_path = format_key(("domains", name, "keys", i, "file"))
            active = ref.get("active", True)
            try:
                loaded = load_key(
                    name.lower(),
                    str(ref.get("selector", "")),
                    _resolve(path.parent, ref["file"]),
                    active if isinstance(active, bool) else True,
                    validate,
                )
            except KeyProblem as exc:
                problems.append(Problem(str(path), key_path, str(exc)))
                continue
            if loaded.warning:
                warnings.append(Problem(str(path), key_path, loaded.warning, "warning"))
            keys.setdefault(name.lower(), []).append(loaded)


def daemon_changes(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """The postwarden.toml keys whose values differ, dotted ("milter.outbound", "policies")."""
    changed: list[str] = []
    for name in type(old).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if a == b:
            continue
        if isinstance(a, BaseModel):
            changed += [
                f"{name}.{field}"
                for field in type(a).model_fields
                if getattr(a, field) != getattr(b, field)
            ]
        else:
            changed.append(name)
    return changed


def load_config(
    path: Path | str,
    *,
    validate_keys: bool = True,
    overrides: dict[Path, str] | None = None,
    daemon: DaemonConfig | None = None,
) -> Config:
    """Everything, validated; raises ConfigError listing every problem. validate_keys=False
    skips OpenSSL's RSA consistency check (about 45 ms a key) for commands that sign nothing.
    `overrides` gives a policy file's text before it is written: how the TUI checks an edit
    with the very loader the daemon will use. `daemon` gives the postwarden.toml settings to use
    instead of reading the file: a reload keeps the settings in force and re-reads policy."""
    path = Path(path)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    daemon = daemon or load_daemon_config(path, problems)
    if daemon is None:
        daemon = _fallback_for_policies(path)
        if daemon is None:
            raise ConfigError(problems)
    policy, keys = load_policy(daemon, problems, warnings, validate_keys, overrides)
    if policy is not None and daemon.store.shared and (policy.warmup or policy.streams.bulk.pace):
        # Pacing and warm-up keep their schedule in the rate transaction of this server's
        # SQLite; with the counts in Redis that transaction is Redis's. Refused, not half-done.
        problems.append(
            Problem(
                str(path),
                "store.shared",
                "pacing ([streams.bulk].pace) and [warmup] work with the SQLite store only, not"
                ' yet with [store].shared: set shared = "" or drop pace and [warmup]',
            )
        )
    if problems or policy is None:
        raise ConfigError(problems)
    return Config(path=path, daemon=daemon, policy=policy, keys=keys, warnings=warnings)
