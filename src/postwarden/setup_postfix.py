"""`postwarden setup-postfix`: the main.cf and master.cf settings postwarden needs, through
postconf(1), idempotent, the change shown before it is made.

- main.cf: postwarden on smtpd_milters (every smtpd: port 25, submission, the notice service)
  and on non_smtpd_milters (pickup: sendmail(1) mail), a socket inside Postfix's chroot, the
  macros postwarden reads, tempfail when it is down, and nothing that would break a signature.
- master.cf: the submission service (TLS and SASL required, milter_macro_daemon_name=ORIGINATING),
  every smtpd service's own `-o smtpd_milters=` (if any) made to include postwarden, and the
  notice service lock notices are submitted to (milter/notify.py): an smtpd on the UNIX-domain
  socket public/postwarden-notice, which only group postdrop can reach.

Mail relayed on port 25 for a mynetworks client without SASL is outbound through the
`network:127.0.0.0/8` rule of [milter].outbound (the shipped postwarden.toml has it).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postwarden import EX_OK, EX_TEMPFAIL
from postwarden.config import config_path
from postwarden.config.models import MilterSection
from postwarden.milter.notify import NOTICE_DAEMON_NAME, NOTICE_SERVICE_TAG

CHROOT_SOCKET = "unix:/postwarden/postwarden.sock"
FULL_SOCKET = "unix:/var/spool/postfix/postwarden/postwarden.sock"
NOTICE_SERVICE = "postwarden-notice"

MAIN_SETTINGS: dict[str, str] = {
    # postwarden down or failing: clients get 4xx and retry; sendmail(1) mail waits in maildrop.
    "milter_default_action": "tempfail",
    "milter_protocol": "6",
    "milter_connect_macros": "j {daemon_name} {daemon_addr} v _",
    "milter_mail_macros": "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",
    "milter_end_of_data_macros": "i",
    # what Postfix may change after signing, each of which breaks DKIM
    "disable_mime_output_conversion": "yes",
    "smtp_line_length_limit": "0",
    # libmilter cuts a header value at a NUL: refuse such mail before any milter sees it
    "message_reject_characters": "\\0",
    # sendmail(1) mail with raw UTF-8 headers: postwarden encodes them ([headers].repair);
    # Postfix's default would already have marked such mail SMTPUTF8-only, and it would bounce.
    "smtputf8_autodetect_classes": "verify",
}

SUBMISSION_OPTIONS: dict[str, str] = {
    "syslog_name": "postfix/submission",
    "smtpd_tls_security_level": "encrypt",
    "smtpd_tls_auth_only": "yes",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_sasl_type": "dovecot",
    "smtpd_sasl_path": "private/auth",
    "smtpd_client_restrictions": "permit_sasl_authenticated,reject",
    "smtpd_relay_restrictions": "permit_sasl_authenticated,reject",
    "milter_macro_daemon_name": "ORIGINATING",
}

# The notice service: smtpd on the UNIX-domain socket public/postwarden-notice, which only group
# postdrop can reach (public/ is postfix:postdrop 0710); the socket's mode is the access control,
# so it relays for whoever reaches it (all of them show as localhost, 127.0.0.1). Its mail passes through postwarden like any other.
NOTICE_OPTIONS: dict[str, str] = {
    "syslog_name": NOTICE_SERVICE_TAG.partition("=")[2],
    # How the milter knows the path notices take (the HMAC token is what proves one).
    "milter_macro_daemon_name": NOTICE_DAEMON_NAME,
    "smtpd_sasl_auth_enable": "no",
    "smtpd_client_restrictions": "",
    "smtpd_helo_restrictions": "",
    "smtpd_sender_restrictions": "",
    # Postfix refuses a bare "permit"; its clients show as localhost 127.0.0.1.
    "mynetworks": "127.0.0.0/8",
    "smtpd_relay_restrictions": "permit_mynetworks,reject",
    "smtpd_recipient_restrictions": "permit_mynetworks,reject",
}


class SetupError(Exception):
    pass


@dataclass(frozen=True)
class Change:
    where: str  # "main.cf" or "master.cf"
    key: str  # a main.cf parameter, "SERVICE/TYPE" or "SERVICE/TYPE/PARAM"
    old: str | None
    new: str

    def diff(self) -> str:
        old = "" if self.old is None else f"-{self.where}: {self.key} = {self.old}\n"
        return f"{old}+{self.where}: {self.key} = {self.new}"


@dataclass(frozen=True)
class Service:
    name: str
    type: str
    chroot: str
    command: str

    @property
    def key(self) -> str:
        return f"{self.name}/{self.type}"


class Postconf:
    def __init__(self, config_directory: str) -> None:
        self.dir = config_directory

    def _run(self, *args: str) -> str:
        try:
            res = subprocess.run(
                ["postconf", "-c", self.dir, *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SetupError(f"postconf: {exc}") from None
        if res.returncode != 0:
            raise SetupError(f"postconf -c {self.dir} {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def main(self, key: str) -> str:
        return self._run("-h", key).strip()

    def services(self) -> list[Service]:
        out = []
        for line in self._run("-M").splitlines():
            f = line.split()
            if len(f) >= 8:
                out.append(Service(f[0], f[1], f[4], f[7]))
        return out

    def params(self) -> dict[str, str]:
        """Every master.cf `-o` override, keyed SERVICE/TYPE/PARAM."""
        out = {}
        for line in self._run("-P").splitlines():
            key, sep, value = line.partition(" = ")
            if sep:
                out[key.strip()] = value.strip()
            elif line.endswith(" ="):
                out[line[:-2].strip()] = ""
        return out

    def apply(self, change: Change) -> None:
        if change.where == "main.cf":
            self._run("-e", f"{change.key} = {change.new}")
        elif change.key.count("/") == 1:
            self._run("-Me", f"{change.key} = {change.new}")
        else:
            self._run("-Pe", f"{change.key}={change.new}")


def _with_milter(current: str, socket: str, sep: str = " ") -> str:
    """A master.cf -o value cannot hold a space: there the list is joined with commas."""
    items = [v for v in re.split(r"[\s,]+", current) if v]
    return current if socket in items else sep.join([*items, socket])


def plan(
    pc: Postconf,
    *,
    smtp_service: str = "smtp",
    submission_service: str = "submission",
    notice_service: str = NOTICE_SERVICE,
) -> tuple[list[Change], list[str]]:
    """The changes to make, and warnings about what cannot be fixed by a setting."""
    changes: list[Change] = []
    warnings: list[str] = []
    services = pc.services()
    by_key = {s.key: s for s in services}
    params = pc.params()
    # Chrooted smtpd and cleanup see the spool as /: the socket name depends on it.
    relevant = [s for s in services if s.command in ("smtpd", "cleanup")]
    chroots = {s.chroot for s in relevant}
    chrooted = chroots != {"n"}
    if len(chroots) > 1:
        warnings.append(
            "smtpd and cleanup services differ in chroot ("
            + ", ".join(f"{s.key}={s.chroot}" for s in relevant)
            + f"): postwarden's socket is named {CHROOT_SOCKET}, which a service with chroot n cannot reach"
        )
    socket = CHROOT_SOCKET if chrooted else FULL_SOCKET

    for key in ("smtpd_milters", "non_smtpd_milters"):
        old = pc.main(key)
        new = _with_milter(old, socket)
        if new != old:
            changes.append(Change("main.cf", key, old, new))
    for key, value in MAIN_SETTINGS.items():
        old = pc.main(key)
        if old != value:
            changes.append(Change("main.cf", key, old, value))

    wanted: list[tuple[str, dict[str, str]]] = []
    if f"{smtp_service}/inet" not in by_key:
        warnings.append(f"master.cf has no {smtp_service}/inet service (port 25)")
    sub_key = f"{submission_service}/inet"
    if sub_key not in by_key:
        changes.append(
            Change("master.cf", sub_key, None, f"{submission_service} inet n - y - - smtpd")
        )
    wanted.append((sub_key, SUBMISSION_OPTIONS))
    notice_key = f"{notice_service}/unix"
    tagged = [
        k.rsplit("/", 1)[0]
        for k, v in params.items()
        if k.endswith("/syslog_name") and v == NOTICE_OPTIONS["syslog_name"]
    ]
    if tagged and notice_key not in tagged:
        notice_key = tagged[0]
    if notice_key not in by_key:
        changes.append(
            Change(
                "master.cf",
                notice_key,
                None,
                f"{notice_key.rsplit('/', 1)[0]} unix n - {'y' if chrooted else 'n'} - - smtpd",
            )
        )
    wanted.append((notice_key, NOTICE_OPTIONS))
    for svc, options in wanted:
        for param, value in options.items():
            current = params.get(f"{svc}/{param}")
            if current != value:
                changes.append(Change("master.cf", f"{svc}/{param}", current, value))
    # Every smtpd (and pickup) with its own milter list must include postwarden.
    for s in services:
        for param in ("smtpd_milters", "non_smtpd_milters"):
            own = params.get(f"{s.key}/{param}")
            if own is not None:
                new = _with_milter(own, socket, ",")
                if new != own:
                    changes.append(Change("master.cf", f"{s.key}/{param}", own, new))
        opts = params.get(f"{s.key}/receive_override_options", "")
        if "no_milters" in opts and s.command in ("smtpd", "pickup"):
            warnings.append(
                f"master.cf {s.key} has receive_override_options={opts}: its mail is not seen by postwarden"
            )
    return changes, warnings


def _networks(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The CIDR entries of a mynetworks value ("[::1]/128" included; tables are skipped)."""
    out = []
    for item in re.split(r"[\s,]+", value):
        text = item.replace("[", "").replace("]", "")
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped:
            continue  # Postfix shows the milter such clients as IPv4 addresses
        out.append(net)
    return out


def uncovered_networks(mynetworks: str, outbound: list[str]) -> list[str]:
    """mynetworks ranges no `network:` rule of [milter].outbound covers: mail relayed for
    them without SASL would pass as inbound, unsigned and not counted."""
    rules = []
    for rule in outbound:
        kind, _, arg = rule.partition(":")
        if kind == "network":
            with contextlib.suppress(ValueError):
                rules.append(ipaddress.ip_network(arg, strict=False))
    missing = []
    for net in _networks(mynetworks):
        if not any(
            net.version == r.version and net.subnet_of(r)  # type: ignore[arg-type]
            for r in rules
        ):
            missing.append(str(net))
    return missing


def outbound_rules(config_file: Path) -> list[str]:
    """[milter].outbound of postwarden.toml, read without validating the rest."""
    try:
        with config_file.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        raw = {}
    milter = raw.get("milter")
    rules = milter.get("outbound") if isinstance(milter, dict) else None
    if isinstance(rules, list) and all(isinstance(r, str) for r in rules):
        return rules
    return list(MilterSection().outbound)


def run(
    config_directory: str,
    *,
    dry_run: bool,
    smtp_service: str = "smtp",
    submission_service: str = "submission",
    notice_service: str = NOTICE_SERVICE,
    outbound: list[str] | None = None,
) -> tuple[list[Change], list[str]]:
    pc = Postconf(config_directory)
    changes, warnings = plan(
        pc,
        smtp_service=smtp_service,
        submission_service=submission_service,
        notice_service=notice_service,
    )
    if outbound is not None:
        for net in uncovered_networks(pc.main("mynetworks"), outbound):
            warnings.append(
                f'mynetworks has {net}, which no "network:" rule of [milter].outbound covers: mail '
                f'relayed for it without SASL passes as inbound (unsigned, not counted); add "network:{net}"'
            )
    if not dry_run:
        for change in changes:
            pc.apply(change)
    return changes, warnings


# ---- the command -------------------------------------------------------------------------------


def cmd_setup_postfix(args: argparse.Namespace) -> int:
    try:
        changes, warnings = run(
            args.config_directory,
            dry_run=args.dry_run,
            smtp_service=args.smtp_service,
            submission_service=args.submission_service,
            notice_service=args.notice_service,
            outbound=outbound_rules(config_path(args.config)),
        )
    except SetupError as exc:
        print(f"postwarden setup-postfix: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(
            json.dumps(
                {
                    "config_directory": args.config_directory,
                    "dry_run": args.dry_run,
                    "changes": [
                        {"file": c.where, "key": c.key, "old": c.old, "new": c.new} for c in changes
                    ],
                    "warnings": warnings,
                },
                indent=2,
            )
        )
        return EX_OK
    for c in changes:
        print(c.diff())
    if not changes:
        print(f"{args.config_directory}: nothing to change")
    elif args.dry_run:
        print(f"{len(changes)} change(s) not made (--dry-run)")
    else:
        print(f"{len(changes)} change(s) made; run `postfix reload`")
    return EX_OK


def register(sub: Any) -> None:
    """The `setup-postfix` subcommand, added to cli.py's parser."""
    s = sub.add_parser(
        "setup-postfix",
        help="apply the main.cf and master.cf settings postwarden needs",
        description="Apply the main.cf and master.cf settings postwarden needs, through "
        "postconf(1): postwarden on smtpd_milters (every smtpd: port 25, submission) and "
        "non_smtpd_milters (pickup), its socket inside Postfix's chroot, "
        "milter_default_action=tempfail, disable_mime_output_conversion=yes, "
        "message_reject_characters=\\0, the submission service (TLS and Dovecot SASL required, "
        "milter_macro_daemon_name=ORIGINATING) and the service lock notices are "
        "submitted to (public/postwarden-notice, reachable by group postdrop only). Idempotent: prints each change (- old, + new) before making it; a second "
        "run changes nothing. Then run `postfix reload`. Warns about each mynetworks range "
        "that no network: rule of postwarden.toml's [milter].outbound covers (mail relayed for "
        "it without SASL would pass as inbound).",
    )
    s.add_argument("--dry-run", action="store_true", help="print the changes, make none")
    s.add_argument(
        "--config-directory",
        default="/etc/postfix",
        metavar="DIR",
        help="the Postfix instance to set up (default /etc/postfix)",
    )
    s.add_argument(
        "--smtp-service",
        default="smtp",
        metavar="NAME",
        help="master.cf name of the port-25 smtpd (default smtp)",
    )
    s.add_argument(
        "--submission-service",
        default="submission",
        metavar="NAME",
        help="master.cf name of the submission smtpd, created if missing (default submission)",
    )
    s.add_argument(
        "--notice-service",
        default=NOTICE_SERVICE,
        metavar="NAME",
        help="master.cf name of the notice service, a UNIX-domain smtpd in the spool's public/"
        f" folder that postwarden submits lock notices to (default {NOTICE_SERVICE})",
    )
    s.add_argument("--json", action="store_true", help="the changes as one JSON document")
    s.set_defaults(fn=cmd_setup_postfix)
