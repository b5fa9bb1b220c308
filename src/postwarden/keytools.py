"""Key management: `postwarden keygen` and `postwarden import-opendkim`."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postwarden.config.keys import MIN_RSA_BITS, LoadedKey, load_key
from postwarden.config.models import is_domain
from postwarden.owner import Owner, give, make_dirs

DEFAULT_KEY_DIR = "/etc/postwarden/keys"
SELECTOR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TXT_CHUNK = 255
# An explicit TTL makes the record parse on its own and paste safely into any zone (a $TTL line
# would change the default of every record after it).
TXT_TTL = 3600


class KeyToolError(Exception):
    pass


# ---- keygen ------------------------------------------------------------------------------------


def generate(
    domain: str,
    selector: str,
    algorithm: str,
    bits: int,
    directory: Path,
    owner: Owner | None = None,
) -> LoadedKey:
    """Write a new private key, mode 0600, to DIRECTORY/DOMAIN/SELECTOR.key; never overwrite.
    With an owner (keygen run as root), the key and the folders made for it are the owner's,
    and so is the domain's folder, so that the daemon can reach the key."""
    domain = domain.lower().rstrip(".")
    if not is_domain(domain):
        raise KeyToolError(f'"{domain}" is not a domain name')
    if not SELECTOR_RE.match(selector):
        raise KeyToolError(f'"{selector}" is not a selector: use letters, digits, ".", "-" and "_"')
    if algorithm == "rsa" and bits < MIN_RSA_BITS:
        raise KeyToolError(f"--bits {bits}: an RSA key needs at least {MIN_RSA_BITS} bits")
    path = directory / domain / f"{selector}.key"
    if path.exists():
        raise KeyToolError(f"{path} exists: choose another selector (keys are never overwritten)")
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = (
        rsa.generate_private_key(65537, bits)
        if algorithm == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    make_dirs(path.parent, owner)
    give(path.parent, owner)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    if owner is not None:
        os.fchown(fd, owner.uid, owner.gid)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return load_key(domain, selector, str(path), active=False)


def txt_record(key: LoadedKey) -> str:
    """The TXT record in zone-file form, as opendkim-genkey's .txt: strings of at most 255."""
    tags = "v=DKIM1; h=sha256; " if key.algorithm == "rsa" else "v=DKIM1; "
    head = f'"{tags}k={key.algorithm}; "'
    p = "p=" + key.public_key_b64()
    chunks = [f'"{p[i : i + TXT_CHUNK]}"' for i in range(0, len(p), TXT_CHUNK)]
    body = "\n\t  ".join([head, *chunks])
    return (
        f"{key.selector}._domainkey\t{TXT_TTL}\tIN\tTXT\t( {body} )"
        f"  ; ----- DKIM key {key.selector} for {key.domain}"
    )


def policy_line(key: LoadedKey) -> str:
    return f'{{ selector = "{key.selector}", file = "{key.file}", active = false }},'


def keygen_output(key: LoadedKey) -> str:
    """What keygen prints: a zone-file fragment (origin: the domain), the policy line as a
    comment, so the whole output can be saved as SELECTOR.txt and still parse."""
    lines = [
        f"; DKIM {key.algorithm} key ({key.bits} bits) for {key.domain}, selector {key.selector}",
        f"; private key: {key.file} (mode 0600)",
        f"; 1. publish this record in the zone of {key.domain}:",
        txt_record(key),
        f'; 2. add to keys in [domains."{key.domain}"] of a policy file, staged until the record resolves',
        f"; (dig +short TXT {key.selector}._domainkey.{key.domain}):",
        f";   {policy_line(key)}",
        "; 3. then set active = true (or drop it), run `postwarden check-config` and `postwarden reload`.",
    ]
    return "\n".join(lines)


# ---- import-opendkim ---------------------------------------------------------------------------


@dataclass
class Imported:
    domains: dict[str, dict[str, object]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def add_key(self, domain: str, selector: str, keyfile: str, subdomains: bool = False) -> None:
        entry = self.domains.setdefault(domain, {"include_subdomains": False, "keys": []})
        keys = entry["keys"]
        assert isinstance(keys, list)
        if not any(k["selector"] == selector for k in keys):
            keys.append({"selector": selector, "file": keyfile})
        if subdomains:
            entry["include_subdomains"] = True

    def toml(self, source: str) -> str:
        doc = tomlkit.document()
        doc.add(tomlkit.comment(f"Imported from {source} by `postwarden import-opendkim`."))
        doc.add(
            tomlkit.comment("The key files stay where OpenDKIM had them: postwarden's user must")
        )
        doc.add(tomlkit.comment("read them, and they must be mode 0600 or 0400."))
        domains = tomlkit.table(is_super_table=True)
        for name in sorted(self.domains):
            entry = self.domains[name]
            t = tomlkit.table()
            t.add("include_subdomains", entry["include_subdomains"])
            arr = tomlkit.array()
            arr.multiline(True)
            for k in entry["keys"]:  # type: ignore[attr-defined]
                inline = tomlkit.inline_table()
                inline.update(k)
                arr.append(inline)
            t.add("keys", arr)
            domains.add(name, t)
        doc.add("domains", domains)
        return tomlkit.dumps(doc)


def _conf(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ") if " " in line else line.partition("\t")
            out[key.strip().lower()] = value.strip()
    return out


def _dataset(spec: str, base: Path) -> tuple[list[list[str]], bool]:
    """Rows of an OpenDKIM data set (file:, refile:, a plain path, or csl:); and whether its
    keys are patterns (refile)."""
    kind, sep, rest = spec.partition(":")
    if not sep or kind.startswith("/"):
        kind, rest = "file", spec
    if kind == "csl":
        return [[item.strip()] for item in rest.split(",") if item.strip()], False
    if kind not in ("file", "refile"):
        raise KeyToolError(f'data set "{spec}": only file:, refile: and csl: can be imported')
    path = Path(rest)
    path = path if path.is_absolute() else base / path
    try:
        text = path.read_text()
    except OSError as exc:
        raise KeyToolError(f"{path}: {exc.strerror}") from None
    rows = [
        line.split()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    return rows, kind == "refile"


def import_opendkim(conf_path: Path) -> Imported:
    try:
        conf = _conf(conf_path)
    except OSError as exc:
        raise KeyToolError(f"{conf_path}: {exc.strerror}") from None
    base = conf_path.parent
    result = Imported()
    if "keytable" in conf:
        key_rows, _ = _dataset(conf["keytable"], base)
        keytable: dict[str, tuple[str, str, str]] = {}
        for row in key_rows:
            if len(row) >= 2 and row[1].count(":") >= 2:
                domain, selector, keyfile = row[1].split(":", 2)
                keytable[row[0]] = (domain.lower(), selector, keyfile)
            else:
                result.warnings.append(f"KeyTable line not understood: {' '.join(row)}")
        if "signingtable" not in conf:
            raise KeyToolError(f"{conf_path}: KeyTable without SigningTable")
        sign_rows, patterns = _dataset(conf["signingtable"], base)
        for row in sign_rows:
            if len(row) < 2 or row[1] not in keytable:
                result.warnings.append(
                    f"SigningTable line names no KeyTable entry: {' '.join(row)}"
                )
                continue
            domain, selector, keyfile = keytable[row[1]]
            pattern = row[0].lower()
            target = pattern.rpartition("@")[2] if patterns or "@" in pattern else pattern
            subdomains = target.startswith("*.") or target.startswith(".")
            target = target.lstrip("*.") if subdomains else target
            if domain == "%":
                domain = target
            if target != domain:
                result.warnings.append(
                    f"SigningTable {row[0]} signs with d={domain}: postwarden signs each domain's"
                    f' mail with that domain\'s own keys; add [domains."{target}"] by hand'
                )
                continue
            result.add_key(domain, selector, keyfile, subdomains)
    elif {"domain", "selector", "keyfile"} <= set(conf):
        rows, _ = _dataset(
            conf["domain"] if ":" in conf["domain"] else f"csl:{conf['domain']}", base
        )
        for row in rows:
            result.add_key(row[0].lower(), conf["selector"], conf["keyfile"])
    else:
        raise KeyToolError(
            f"{conf_path}: neither KeyTable and SigningTable nor Domain, Selector and KeyFile"
        )
    if not result.domains:
        raise KeyToolError(f"{conf_path}: no signing domain could be imported")
    return result


def write_policy(text: str, output: Path | None, owner: Owner | None = None) -> None:
    """The policy file, mode 0640, the owner's when given (run as root)."""
    if output is None:
        sys.stdout.write(text)
        return
    try:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        raise KeyToolError(f"{output} exists: choose another file name") from None
    except OSError as exc:
        raise KeyToolError(f"{output}: {exc.strerror}") from None
    if owner is not None:
        os.fchown(fd, owner.uid, owner.gid)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
