"""DKIM private key files: checked when the config loads, never when mail arrives."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

MIN_RSA_BITS = 1024
WARN_RSA_BITS = 2048


class KeyProblem(Exception):
    pass


@dataclass(frozen=True)
class LoadedKey:
    domain: str
    selector: str
    file: str
    active: bool
    algorithm: Literal["rsa", "ed25519"]
    bits: int
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    warning: str = ""

    def public_key_b64(self) -> str:
        """The p= value of this key's DKIM TXT record."""
        pub = self.private_key.public_key()
        if isinstance(pub, ed25519.Ed25519PublicKey):
            raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = pub.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return base64.b64encode(raw).decode()


def _parse(data: bytes, validate: bool) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if b"-----BEGIN" in data:
        try:
            # OpenSSL's RSA consistency check costs ~45 ms a key: worth it where keys sign
            # (the daemon, check-config), not for a command that needs only the public half.
            key = serialization.load_pem_private_key(
                data, password=None, unsafe_skip_rsa_key_validation=not validate
            )
        except (ValueError, TypeError) as exc:
            raise KeyProblem(f"not a readable PEM private key ({exc})") from None
        if isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            return key
        raise KeyProblem(f"unsupported key algorithm {type(key).__name__}: use RSA or Ed25519")
    # dkimpy's dknewkey writes an Ed25519 key as the base64 of its 32-byte seed.
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except binascii.Error:
        seed = b""
    if len(seed) == 32:
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    raise KeyProblem("neither a PEM private key nor an Ed25519 seed: unknown key format")


# Parsed keys by (file content digest, validated): a reload re-reads and re-checks every key
# file (owner, mode, content), but parses and RSA-checks only the ones whose content changed,
# so a reload with 100 unchanged keys costs file reads, not 100 OpenSSL key checks.
_PARSED: dict[tuple[bytes, bool], rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey] = {}
PARSED_KEPT = 4096
parses = 0  # keys parsed since start (the test that a reload of unchanged keys parses none)


def _parse_cached(data: bytes, validate: bool) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    global parses
    digest = (hashlib.sha256(data).digest(), validate)
    key = _PARSED.get(digest) or (_PARSED.get((digest[0], True)) if not validate else None)
    if key is None:
        parses += 1
        key = _parse(data, validate)
        if len(_PARSED) >= PARSED_KEPT:
            _PARSED.clear()
        _PARSED[digest] = key
    return key


def load_key(
    domain: str, selector: str, path: str, active: bool, validate: bool = True
) -> LoadedKey:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise KeyProblem(f"key file {path} does not exist") from None
    except PermissionError:
        raise KeyProblem(f"key file {path} cannot be read: permission denied") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyProblem(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyProblem(
            f"key file {path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}):"
            f" chmod 600 {path}"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise KeyProblem(f"key file {path} cannot be read: {exc.strerror}") from None
    try:
        key = _parse_cached(data, validate)
    except KeyProblem as exc:
        raise KeyProblem(f"key file {path}: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise KeyProblem(
                f"key file {path}: RSA key of {bits} bits; at least {MIN_RSA_BITS} needed"
            )
        warning = (
            f"key file {path}: RSA key of {bits} bits; {WARN_RSA_BITS} is recommended"
            if bits < WARN_RSA_BITS
            else ""
        )
        return LoadedKey(domain, selector, path, active, "rsa", bits, key, warning)
    return LoadedKey(domain, selector, path, active, "ed25519", 256, key)
