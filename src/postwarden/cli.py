"""The `postwarden` command (../shared/spec/cli.md)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from postwarden import EX_CONFIG, EX_FOUND, EX_OK, EX_TEMPFAIL, EX_USAGE, __version__
from postwarden.config import ConfigError, config_path, load_config
from postwarden.store import records
from postwarden.textsafe import printable, printable_lines  # header-derived text on a terminal


def _load(args: argparse.Namespace, *, validate_keys: bool = False) -> Any:
    """The config for a command that signs nothing: key files are read and checked, but not
    put through OpenSSL's RSA consistency check (check-config and the daemon do that)."""
    try:
        cfg = load_config(config_path(args.config), validate_keys=validate_keys)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    return cfg


# ---- commands ----------------------------------------------------------------------------------


def cmd_milter(args: argparse.Namespace) -> int:
    from postwarden.milter.daemon import run

    return run(config_path(args.config))


# ---- releaser (streams.md: paced and warm-up holds released by a root process of its own) ----
def cmd_releaser(args: argparse.Namespace) -> int:
    from postwarden.milter.release_service import serve

    return serve(config_path(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) found")
        return EX_CONFIG
    for w in cfg.warnings:
        print(w)
    from postwarden.policy.route import local_overlaps

    for overlap in local_overlaps(cfg.policy):
        print(f"warning: {overlap}")
    # Run as root: can the service user read what the daemon reads?
    from postwarden import owner

    user = cfg.daemon.milter.user
    needed = [str(path), *(k.file for keys in cfg.keys.values() for k in keys)]
    needed += [str(f) for f in sorted(Path(cfg.daemon.policies).glob("*.toml"))]
    denied = owner.unreadable_as(user, needed)
    if denied is None and owner.is_root() and not owner.user_exists(user):
        print(
            f"warning: the service user {user} ([milter].user) does not exist: whether it can"
            " read the keys and policy files was not checked"
        )
    if denied:
        for file, why in denied:
            print(f"{file}: the service user {user} cannot read it: {why}" if file else why)
        print(f"{len(denied)} problem(s) found")
        return EX_CONFIG
    n_keys = sum(len(k) for k in cfg.keys.values())
    files = sorted(Path(cfg.daemon.policies).glob("*.toml"))
    print(
        f"{path}: ok: {len(files)} policy file(s), {len(cfg.policy.domains)} domain(s),"
        f" {len(cfg.policy.users)} user(s), {n_keys} key(s); policy {cfg.policy.hash}"
    )
    return EX_OK


def cmd_reload(args: argparse.Namespace) -> int:
    from postwarden import control

    # A policy the daemon would refuse is refused here first, with its problems, except OpenSSL's
    # RSA consistency check (45 ms a key): that the daemon runs on the keys whose files changed
    # and reports through the database like any other problem. Run here, it cost 4.5 s of CPU
    # for 100 keys on the machine that carries the mail, every reload.
    cfg = _load(args)
    code, message = control.reload(cfg, args.wait)
    print(message, file=sys.stdout if code in (EX_OK, EX_CONFIG) else sys.stderr)
    return code


def cmd_db_migrate(args: argparse.Namespace) -> int:
    from postwarden import owner
    from postwarden.store import migrate, open_db

    cfg = _load(args)
    # Run as root, a new database (and its folder) is the service user's, not root's.
    service = owner.service_owner(cfg.daemon.milter.user)
    db_path = Path(cfg.daemon.store.database)
    owner.make_dirs(db_path.parent, service, 0o700)
    fresh = not db_path.exists()
    applied = migrate(open_db(db_path))
    if fresh:
        for suffix in ("", "-wal", "-shm"):
            side = db_path.with_name(db_path.name + suffix)
            if side.exists():
                # It holds the notice HMAC key: the service user's alone.
                side.chmod(0o600)
                owner.give(side, service)
    print(
        f"{cfg.daemon.store.database}: "
        + (f"applied {', '.join(applied)}" if applied else "up to date")
    )
    return EX_OK


def parse_since(text: str, now: datetime) -> str:
    """ "15m", "2h", "7d", or an ISO time (UTC when no zone is given)."""
    from postwarden.store.queries import point_in_time

    try:
        return point_in_time(text, now)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: use 15m, 2h, 7d or an ISO time such as 2026-11-23T10:00"
        ) from None


def _print_rows(rows: list[dict[str, Any]], as_json: bool) -> None:
    for r in rows:
        if as_json:
            print(json.dumps(r, sort_keys=True))
            continue
        reasons = ",".join(f"{x['check']}.{x['code']}" for x in r["reasons"]) or "-"
        if r["signatures"]:
            reasons += "  signed=" + ",".join(f"{x['d']}/{x['s']}" for x in r["signatures"])
        print(
            printable(
                f"{r['time'][:19].replace('T', ' ')}  {r['queue_id'] or 'NOQUEUE':<12} {r['action']:<10}"
                f" {printable(r['identity']):<28} {printable(r['header_from'])[:32]:<32} {reasons}"
                + (f"  error={r['error']}" if r["error"] else "")
            )
        )


def cmd_log(args: argparse.Namespace) -> int:
    from postwarden.store import daemon_state, queries
    from postwarden.store.db import open_db

    cfg = _load(args)
    db_path = cfg.daemon.store.database
    if not Path(db_path).exists():
        print(
            f"{db_path}: no database yet (run `postwarden db migrate` or start the milter)",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    try:
        since = parse_since(args.since, datetime.now(UTC)) if args.since else None
    except argparse.ArgumentTypeError as exc:
        print(f"postwarden log: {exc}", file=sys.stderr)
        return EX_USAGE
    db = open_db(db_path, readonly=True)
    filters = {"since": since, "sender": args.sender, "action": args.action}
    for h in daemon_state.writer_health(db):
        # Said on stderr so that --json stays one document: decisions the log cannot show.
        print(
            f"postwarden: the daemon started {h.started_at[:19]}Z (pid {h.pid}) could not record"
            f" {h.rows_dropped + h.rows_failed} decision row(s): {h.rows_dropped} dropped on a"
            f" full queue, {h.rows_failed} refused by the database (see its log)",
            file=sys.stderr,
        )
    rows = queries.decisions(db, limit=args.limit, **filters)
    if args.json and not args.follow:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EX_OK
    if not args.json and not rows and not args.follow:
        print("no decisions match")
    _print_rows(rows, args.json)
    if not args.follow:
        return EX_OK
    last = rows[-1]["id"] if rows else records.max_decision_id(db)
    try:
        while True:
            sys.stdout.flush()
            time.sleep(0.5)
            new = queries.decisions(db, after_id=last, limit=None, **filters)
            if new:
                _print_rows(new, args.json)
                last = new[-1]["id"]
    except KeyboardInterrupt:
        return EX_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from postwarden import keytools

    bits = args.bits if args.bits is not None else 2048
    if args.algorithm == "ed25519" and args.bits is not None:
        print("postwarden keygen: --bits applies to RSA keys only", file=sys.stderr)
        return EX_USAGE
    from postwarden import owner

    # Run as root, the key and its folders go to the service user ([milter].user).
    service = owner.service_owner(owner.user_name(config_path(args.config)))
    try:
        key = keytools.generate(
            args.domain, args.selector, args.algorithm, bits, Path(args.dir), service
        )
    except keytools.KeyToolError as exc:
        print(f"postwarden keygen: {exc}", file=sys.stderr)
        return EX_FOUND
    except PermissionError as exc:
        print(f"postwarden keygen: {exc.filename}: permission denied", file=sys.stderr)
        return EX_FOUND
    if key.warning:
        print(f"warning: {key.warning}", file=sys.stderr)
    print(keytools.keygen_output(key))
    return EX_OK


def cmd_import_opendkim(args: argparse.Namespace) -> int:
    from postwarden import keytools

    try:
        from postwarden import owner

        imported = keytools.import_opendkim(Path(args.conf))
        keytools.write_policy(
            imported.toml(args.conf),
            Path(args.output) if args.output else None,
            owner.service_owner(owner.user_name(config_path(args.config))),
        )
    except keytools.KeyToolError as exc:
        print(f"postwarden import-opendkim: {exc}", file=sys.stderr)
        return EX_CONFIG
    for warning in imported.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.output:
        print(
            f"wrote {args.output}: {len(imported.domains)} domain(s); run `postwarden check-config`"
        )
    return EX_OK


def _db(cfg: Any) -> Any:
    from postwarden.store import migrate, open_db

    db = open_db(cfg.daemon.store.database)
    migrate(db)
    return db


# ---- [store].shared (issue 19): the Redis store, and moving SQLite's counts into it ----------


@contextlib.contextmanager
def _shared(cfg: Any) -> Iterator[Any]:
    """The shared store [store].shared names (None without one); an unreachable Redis or an
    unreadable password file ends the command with a clear error."""
    from postwarden.store.shared import SharedConfigError, SharedUnavailable, open_shared

    try:
        yield open_shared(cfg.daemon.store)
    except SharedConfigError as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    except SharedUnavailable as exc:
        print(
            f"postwarden: the shared store {cfg.daemon.store.shared} is unreachable: {exc}",
            file=sys.stderr,
        )
        raise SystemExit(EX_TEMPFAIL) from None


def cmd_db_move_to_shared(args: argparse.Namespace) -> int:
    import socket

    from postwarden.store.shared import AlreadyMoved, move_to_shared

    cfg = _load(args)
    if not cfg.daemon.store.shared:
        print("postwarden: [store].shared is empty: name the Redis to move to", file=sys.stderr)
        return EX_CONFIG
    db = _db(cfg)
    marker = f"{socket.getfqdn()}:{Path(cfg.daemon.store.database).resolve()}"
    try:
        with _shared(cfg) as shared:
            moved = move_to_shared(db.conn, shared, marker, time.time(), force=args.force)
    except AlreadyMoved as exc:
        print(f"postwarden: {exc}", file=sys.stderr)
        return EX_FOUND
    if args.json:
        print(json.dumps(moved.as_dict(), indent=2, sort_keys=True))
    else:
        print(
            f"moved {moved.events} count(s) of {moved.identities} sender(s) and {moved.locks} "
            f"lock(s) to {cfg.daemon.store.shared}"
            + (f"; {moved.locks_already} lock(s) were there already" if moved.locks_already else "")
        )
        print(
            f"moved {moved.suppressions} suppression(s)"
            + (
                f"; {moved.suppressions_already} were there already"
                if moved.suppressions_already
                else ""
            )
        )
    return EX_OK


def cmd_senders(args: argparse.Namespace) -> int:
    from postwarden import senders

    cfg = _load(args)
    with _shared(cfg) as shared:
        rows = senders.statuses(
            _db(cfg), cfg.policy, datetime.now(UTC), locked_only=args.locked, shared=shared
        )
    paced = _senders_schedule(_db(cfg), cfg)  # streams.md
    if args.json:
        out = [r.as_dict() for r in rows]
        for d in out:
            n, first = paced.get(d["identity"], (0, ""))
            d["paced"], d["next_due"] = n, first
        print(json.dumps(out, indent=2, sort_keys=True))
        return EX_OK
    if not rows:
        print(
            "no senders with mail counted in the last day"
            if not args.locked
            else "no locked senders"
        )
    for r in rows:
        caps = (
            "  ".join(
                f"{c['used']}/{c['limit']} msg per {c['cap'].split('/')[1]}" for c in r.messages
            )
            + "  "
            + "  ".join(
                f"{c['used']}/{c['limit']} rcpt per {c['cap'].split('/')[1]}" for c in r.recipients
            )
        )
        lock = (
            f"  LOCKED since {r.locked_at[:19]}Z ({r.lock_cap}, {r.lock_queue_id})"
            if r.locked
            else ""
        )
        n, first = paced.get(r.identity, (0, ""))
        waits = f"  {n} paced, next due {first[:19]}Z" if n else ""
        print(printable(f"{printable(r.identity):<36} {caps}{lock}{waits}"))
    return EX_OK


# ---- streams.md: paced and warm-up holds in `quarantine list` and `senders` ----


def _with_schedule(db: Any, cfg: Any, items: list[Any]) -> None:
    from postwarden import schedule

    schedule.annotate(db.conn, cfg.policy, datetime.now(UTC), items)


def _senders_schedule(db: Any, cfg: Any) -> dict[str, tuple[int, str]]:
    from postwarden import schedule

    return schedule.by_identity(schedule.due(db.conn, cfg.policy, datetime.now(UTC)))


# ----


def cmd_unlock(args: argparse.Namespace) -> int:
    from postwarden import senders

    cfg = _load(args)
    with _shared(cfg) as shared:
        done = senders.unlock(_db(cfg), args.sender, args.note or "", shared=shared)
    if done:
        print(f"unlocked {args.sender}" + (f" ({args.note})" if args.note else ""))
        print(f"its held mail stays held: postwarden quarantine release --sender {args.sender}")
        return EX_OK
    print(f"{args.sender} is not locked", file=sys.stderr)
    return EX_FOUND


def cmd_quarantine(args: argparse.Namespace) -> int:
    from postwarden import quarantine as q

    cfg = _load(args)
    db = _db(cfg)
    postfix_dir = cfg.daemon.postfix.config_directory
    try:
        if args.q_command == "list":
            items = q.with_decisions(db, q.held(postfix_dir))
            _with_schedule(db, cfg, items)  # streams.md
            if args.sender:
                items = q.by_sender(items, args.sender)
            shown = q.page(items, args.page, args.per_page)
            if args.json:
                print(
                    json.dumps(
                        {
                            "total": len(items),
                            "page": args.page,
                            "per_page": args.per_page,
                            "messages": [m.as_dict() for m in shown],
                        },
                        indent=2,
                        sort_keys=True,
                    )
                )
                return EX_OK
            now = time.time()
            for m in shown:
                age = int(now - m.arrival_time)
                print(
                    f"{m.queue_id:<12} {age // 3600:>3}h{age % 3600 // 60:02d}m  {printable(m.identity or m.sender):<30}"
                    f" {printable(m.header_from)[:30]:<30} {printable(','.join(m.recipients))[:30]:<30}"
                    f" {printable(','.join(m.reasons))}" + (f"  due {m.due[:19]}Z" if m.due else "")
                )
            pages = max(1, -(-len(items) // args.per_page))
            print(f"{len(items)} held; page {args.page} of {pages}")
            return EX_OK
        if args.q_command == "show":
            print(printable_lines(q.show(postfix_dir, args.queue_id)), end="")
            for _, when, action, identity, _, _, reasons in records.decisions_by_queue_id(
                db, [args.queue_id]
            ):
                print(f"\n*** postwarden decision {when}: {action} {printable(identity or '')}")
                for r in json.loads(reasons or "[]"):
                    print(printable(f"*** {r['check']}.{r['code']}: {r['text']}"))
            return EX_OK
        if not args.queue_ids and not args.sender:
            print("name queue ids or --sender", file=sys.stderr)
            return EX_USAGE
        outcome = q.act(
            db,
            postfix_dir,
            args.q_command,
            list(args.queue_ids),
            sender=args.sender or "",
            note=args.note or "",
        )
        if not outcome.done and not outcome.missing:
            print("nothing to do: no such held messages", file=sys.stderr)
            return EX_FOUND
    except q.PostfixError as exc:
        print(f"postwarden quarantine: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except q.BadQueueId as exc:
        print(f"postwarden quarantine {args.q_command}: {printable(str(exc))}", file=sys.stderr)
        return EX_USAGE if exc.usage else EX_FOUND
    verb = {"release": "released", "delete": "deleted"}[args.q_command]
    print(
        f"{verb} {len(outcome.done)} message(s) with {outcome.processes} postsuper call(s)"
        f" in {outcome.seconds:.2f}s"
    )
    if outcome.missing:
        print(
            f"not in the hold queue: {' '.join(outcome.missing[:20])}"
            + (" ..." if len(outcome.missing) > 20 else ""),
            file=sys.stderr,
        )
    return EX_OK if outcome.done else EX_FOUND


def _readiness(cfg: Any) -> Any:
    """What the stored DMARC reports say per domain, for dns-check's next-step advice."""
    from postwarden.reports.summary import readiness

    if not Path(cfg.daemon.store.database).exists():
        return None
    return readiness(_db(cfg), cfg, datetime.now(UTC))


def cmd_dns_check(args: argparse.Namespace) -> int:
    from postwarden import dnsdoctor

    cfg = _load(args)
    domains = [d.lower().rstrip(".") for d in args.domains]
    unknown = [d for d in domains if d not in cfg.policy.domains]
    if unknown:
        print(f"postwarden dns-check: not hosted here: {', '.join(unknown)}", file=sys.stderr)
        return EX_USAGE

    servers = ", ".join(cfg.daemon.dns.nameservers) or "the system resolver"
    total = len(domains or cfg.policy.domains)
    # Progress on stderr, so that stdout stays the report (and --json stays one document).
    print(
        f"postwarden dns-check: {total} domain(s), asking {servers}"
        f" (timeout {cfg.daemon.dns.timeout:g} s)",
        file=sys.stderr,
        flush=True,
    )
    tty = sys.stderr.isatty()

    def progress(done: int, total: int, name: str) -> None:
        if tty:
            end = "" if done < total else "\n"
            print(f"\r{done}/{total} domains checked", end=end, file=sys.stderr, flush=True)
        elif done == total or done % 10 == 0:
            print(f"{done}/{total} domains checked", file=sys.stderr, flush=True)

    report = dnsdoctor.run(cfg, domains or None, progress=progress, readiness=_readiness(cfg))
    if report.unreachable:
        print(
            f"postwarden dns-check: DNS is unreachable: no answer from {servers}"
            f" within {cfg.daemon.dns.timeout:g} s",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    if args.notify_changes:
        mailed = _notify_dns_changes(cfg, report)
        if mailed is None:
            return EX_TEMPFAIL  # not recorded: the next run finds the same change again
    dnsdoctor.record(_db(cfg), report)
    # TXT records are whatever a DNS answer held: shown with their control characters escaped.
    print(report.as_json() if args.json else printable_lines(report.as_text()))
    return EX_FOUND if report.failed else EX_OK


# ---- dns-check --notify-changes (issue 20): mail the admin when a domain's DNS changes ----------


def _notify_dns_changes(cfg: Any, report: Any) -> int | None:
    """Mail [rate].notify what changed since the last run: the number of changes mailed (0:
    none), or None when the mail could not be sent (said on stderr)."""
    import socket

    from postwarden.dnsdoctor.changes import changes, notice
    from postwarden.milter.notify import AdminNotice, NoticeNotSent, Notifier
    from postwarden.store import daemon_state
    from postwarden.store.metrics import last_known_dns

    db = _db(cfg)
    if not cfg.policy.rate.notify:
        print("postwarden dns-check: [rate].notify is empty: nobody to mail", file=sys.stderr)
        return 0
    found = changes(last_known_dns(db), report)
    if not found:
        return 0
    subject, body = notice(found, report.checked_at)
    notifier = Notifier(
        cfg.daemon.postfix.config_directory,
        cfg.policy.rate.notify,
        cfg.daemon.server.hostname or socket.getfqdn(),
        daemon_state.notice_secret(db),
    )
    try:
        notifier.send_now(AdminNotice(subject, body))
    except NoticeNotSent as exc:
        print(f"postwarden dns-check: the change was not mailed: {exc}", file=sys.stderr)
        return None
    print(f"mailed {', '.join(cfg.policy.rate.notify)}: {subject}", file=sys.stderr)
    return len(found)


# ---- reports (reports.md) ---------------------------------------------------------------------


def cmd_reports(args: argparse.Namespace) -> int:
    import sqlite3

    if getattr(args, "reports_command", None) == "ingest":
        # A broken config must not bounce a report back to its sender: Postfix's pipe bounces
        # on 78 but keeps the mail on 75 until the config is fixed.
        try:
            cfg = _load(args)
        except SystemExit as exc:
            if exc.code != EX_CONFIG:
                raise
            print("postwarden reports ingest: configuration error; retry later", file=sys.stderr)
            return EX_TEMPFAIL
        return _reports_ingest(cfg, args)
    cfg = _load(args)
    from postwarden.reports.summary import as_text, summarise

    try:
        parse_since(args.since, datetime.now(UTC))
    except argparse.ArgumentTypeError as exc:
        print(f"postwarden reports: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        summary = summarise(_db(cfg), cfg, datetime.now(UTC), since=args.since, domain=args.domain)
    except sqlite3.OperationalError as exc:
        print(f"postwarden reports: the database: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    # Compact JSON: the document lists every source of every domain, and json's C encoder
    # is ten times faster than the indenting one over it.
    print(json.dumps(summary, sort_keys=True) if args.json else as_text(summary))
    return EX_OK


def _reports_ingest(cfg: Any, args: argparse.Namespace) -> int:
    """Exit 0 when every input was stored or refused with a reason; 75 (retry later) when the
    database could not be written; 2 when a named file cannot be read."""
    import sqlite3

    from postwarden.reports.ingest import ingest
    from postwarden.reports.unpack import MAX_INPUT

    inputs: list[tuple[str, bytes]] = []
    try:
        if not args.files:
            inputs.append(("stdin", sys.stdin.buffer.read(MAX_INPUT + 1)))
        for name in args.files:
            with open(name, "rb") as fh:
                inputs.append((name, fh.read(MAX_INPUT + 1)))
    except OSError as exc:
        print(
            f"postwarden reports ingest: {exc.filename or 'stdin'}: {exc.strerror}", file=sys.stderr
        )
        return EX_USAGE
    done: list[dict[str, Any]] = []
    try:
        db = _db(cfg)
        for source, data in inputs:
            for outcome in ingest(
                db, data, source=source, retention_days=cfg.daemon.store.retention_days
            ):
                done.append({"source": source, **outcome.as_dict()})
                if not args.json:
                    line = f"{source}: {outcome.line()}"
                    print(line, file=sys.stderr if outcome.status == "refused" else sys.stdout)
    except sqlite3.OperationalError as exc:
        print(f"postwarden reports ingest: the database: {exc}; retry later", file=sys.stderr)
        return EX_TEMPFAIL
    if args.json:
        print(json.dumps(done, indent=2, sort_keys=True))
    return EX_OK


# ---- feedback loops and suppression (feedback.md) -------------------------------------------


def cmd_feedback(args: argparse.Namespace) -> int:
    if args.feedback_command == "ingest":
        return _feedback_ingest(args)
    return _feedback_stats(args)


def _feedback_ingest(args: argparse.Namespace) -> int:
    """pipe(8)'s exit codes: 0 stored or ignored with a reason, 75 retry later. Never one that
    makes Postfix bounce a report back to a provider (a config error or an unreadable file is
    75 too: the report waits in the queue until it is fixed)."""
    import sqlite3

    from postwarden.feedback.arf import MAX_INPUT
    from postwarden.feedback.ingest import ingest, notice_sender

    try:
        cfg = load_config(config_path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("postwarden feedback ingest: config error; retry later", file=sys.stderr)
        return EX_TEMPFAIL
    inputs: list[tuple[str, bytes]] = []
    retry = False
    if not args.files:
        inputs.append(("stdin", sys.stdin.buffer.read(MAX_INPUT + 1)))
    for name in args.files:
        try:
            with open(name, "rb") as fh:
                inputs.append((name, fh.read(MAX_INPUT + 1)))
        except OSError as exc:
            print(
                f"postwarden feedback ingest: {name}: {exc.strerror}; retry later", file=sys.stderr
            )
            retry = True
    try:
        db = _db(cfg)
        send = notice_sender(db, cfg)
    except sqlite3.Error as exc:
        print(f"postwarden feedback ingest: the database: {exc}; retry later", file=sys.stderr)
        return EX_TEMPFAIL
    shared = None
    if cfg.daemon.store.shared:  # [store].shared: the suppressions in Redis (imported only then)
        from postwarden.store.shared import SharedConfigError, open_shared

        try:
            shared = open_shared(cfg.daemon.store)
        except SharedConfigError as exc:
            print(f"postwarden feedback ingest: {exc}; retry later", file=sys.stderr)
            return EX_TEMPFAIL
    for source, data in inputs:
        try:
            outcome = ingest(db, cfg, data, source=source, send=send, shared=shared)
        except sqlite3.Error as exc:
            print(
                f"postwarden feedback ingest: {source}: the database: {exc}; retry later",
                file=sys.stderr,
            )
            retry = True
            continue
        except Exception as exc:  # noqa: BLE001  (pipe(8): anything else would bounce the report)
            print(
                f"postwarden feedback ingest: {source}: {type(exc).__name__}: {exc}; retry later",
                file=sys.stderr,
            )
            retry = True
            continue
        out = sys.stderr if outcome.status == "ignored" else sys.stdout
        print(printable(f"{source}: {outcome.line()}"), file=out)
    return EX_TEMPFAIL if retry else EX_OK


def _feedback_stats(args: argparse.Namespace) -> int:
    import sqlite3

    from postwarden.feedback.ingest import notice_sender
    from postwarden.feedback.stats import alerts, rates

    cfg = _load(args)
    now = datetime.now(UTC)
    try:
        db = _db(cfg)
        with _shared(cfg) as shared:
            rows = rates(db, cfg, now, args.domain, shared)
        alerted = alerts(db, cfg, rows, now, notice_sender(db, cfg)) if not args.no_alert else []
    except sqlite3.Error as exc:
        print(f"postwarden feedback stats: the database: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except Exception as exc:  # noqa: BLE001  (the alert could not be mailed: the stats stand)
        print(f"postwarden feedback stats: alert not sent: {exc}", file=sys.stderr)
        alerted = []
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return EX_OK
    limit = cfg.policy.feedback.alert_rate
    print(f"{'domain':<32} {'7 days':>26} {'30 days':>26} suppressed")
    for r in rows:
        cells = [
            f"{r[w]['complaints']}/{r[w]['delivered']} = {r[w]['rate']:.3%}" for w in ("7d", "30d")
        ]
        print(printable(f"{r['domain']:<32} {cells[0]:>26} {cells[1]:>26} {r['suppressed']:>10}"))
        if r["above_alert_rate"]:
            print(printable(f"  ALERT: {r['domain']} is above [feedback].alert_rate {limit:.3%}"))
    for d in alerted:
        print(printable(f"alert for {d} mailed to {', '.join(cfg.policy.rate.notify)}"))
    return EX_OK


def cmd_suppression(args: argparse.Namespace) -> int:
    cfg = _load(args)
    db = _db(cfg)
    with _shared(cfg) as shared:  # [store].shared: the list every server shares, in Redis
        return _suppression(args, db, shared)


def _suppression(args: argparse.Namespace, db: Any, shared: Any) -> int:
    from postwarden.feedback import suppression

    try:
        if args.s_command == "list":
            rows = suppression.entries(db, args.domain, shared)
            if args.json:
                print(json.dumps(rows, indent=2, sort_keys=True))
                return EX_OK
            if not rows:
                print("no suppressed recipients")
            for r in rows:
                why = r["reason"] + (f" ({r['note']})" if r["note"] else "")
                print(
                    printable(
                        f"{r['address']:<40} {r['domain'] or '(every domain)':<24} since {r['created_at'][:19]}Z  {why}"
                    )
                )
            return EX_OK
        if args.s_command == "add":
            if suppression.add(db, args.address, args.domain, args.note or "", shared):
                print(f"suppressed {args.address} for {args.domain or 'every domain'}")
                return EX_OK
            print(
                f"{args.address} is already suppressed for {args.domain or 'every domain'}",
                file=sys.stderr,
            )
            return EX_FOUND
        n = suppression.remove(db, args.address, args.domain, args.note or "", shared)
        if n:
            print(f"removed {n} suppression(s) of {args.address}")
            return EX_OK
        print(
            f"{args.address} is not suppressed" + (f" for {args.domain}" if args.domain else ""),
            file=sys.stderr,
        )
        return EX_FOUND
    except suppression.BadEntry as exc:
        print(f"postwarden suppression: {exc}", file=sys.stderr)
        return EX_USAGE


def cmd_tui(args: argparse.Namespace) -> int:
    from postwarden.store.shared import SharedConfigError
    from postwarden.tui.app import PostwardenApp
    from postwarden.tui.backend import Backend

    try:
        backend = Backend(config_path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return EX_CONFIG
    except SharedConfigError as exc:  # [store].shared's password file
        print(f"postwarden: {exc}", file=sys.stderr)
        return EX_CONFIG
    PostwardenApp(backend, start=args.screen).run()
    return EX_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from postwarden import demo

    if args.stop:
        return demo.stop(Path(args.workdir))
    return demo.run(Path(args.workdir))


# ---- parser ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2, as cli.md says
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="postwarden",
        description="An outbound-mail guard for Postfix. Exit codes: 0 fine, 1 a failure found,"
        " 2 usage, 75 temporary failure, 78 configuration error.",
    )
    p.add_argument("--version", action="version", version=f"postwarden {__version__}")
    p.add_argument(
        "--config",
        metavar="PATH",
        help="postwarden.toml (default: $POSTWARDEN_CONFIG, else /etc/postwarden/postwarden.toml)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser(
        "milter",
        help="run the milter in the foreground",
        description="Run the milter in the foreground (systemd Type=simple). "
        "SIGUSR1 reloads the policy; SIGTERM finishes the messages in hand and exits.",
    )
    s.set_defaults(fn=cmd_milter)

    s = sub.add_parser(
        "releaser",
        help="release paced and warm-up holds (as root, beside an unprivileged milter)",
        description="Run the releaser in the foreground (postwarden-releaser.service): lets "
        "paced and warm-up holds leave at the pace and the day's allowance, over the schedule "
        'the milter keeps in the database. Needs [milter].releaser = "service" (the milter '
        "then starts no releaser of its own) and root: Postfix allows postsuper -H only to root. "
        "It keeps root only for the Postfix commands it runs and does the rest as [milter].user. "
        "It re-reads the policy on SIGHUP and whenever the milter reloads (postwarden reload); "
        'SIGTERM stops it. Exit 78: config error or "thread" mode; '
        "77: not root.",
    )
    s.set_defaults(fn=cmd_releaser)

    s = sub.add_parser(
        "reload",
        help="make the running milter re-read its policy",
        description="Validate the policy, then make the running milter re-read it "
        "(SIGUSR1) and report whether it was taken. Exit 0 taken, 78 refused, "
        "75 not running.",
    )
    s.add_argument(
        "--wait", type=float, default=10.0, help="seconds to wait for the daemon (default 10)"
    )
    s.set_defaults(fn=cmd_reload)

    s = sub.add_parser(
        "check-config",
        help="validate postwarden.toml, policies and key files",
        description="Validate postwarden.toml, every policy file and every key file; "
        "print each problem with file and key. Exit 0 valid, 78 invalid.",
    )
    s.set_defaults(fn=cmd_check_config)

    s = sub.add_parser("db", help="database maintenance", description="Database maintenance.")
    dbsub = s.add_subparsers(
        dest="db_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    m = dbsub.add_parser(
        "migrate",
        help="create or upgrade the SQLite schema",
        description="Create or upgrade the SQLite schema (the daemon also does this on start).",
    )
    m.set_defaults(fn=cmd_db_migrate)
    m = dbsub.add_parser(
        "move-to-shared",
        help="copy this server's counts, locks and suppressions into the shared store "
        "([store].shared)",
        description="Copy the database's rate counts (the last two days), locks and active "
        "suppressions into the "
        "Redis [store].shared names, once per database: run it on each server when switching, "
        "before restarting the daemon with [store].shared set. The database keeps its rows.",
    )
    m.add_argument("--force", action="store_true", help="copy again (counts twice)")
    m.add_argument("--json", action="store_true", help="print what was moved as JSON")
    m.set_defaults(fn=cmd_db_move_to_shared)

    s = sub.add_parser(
        "log",
        help="recent decisions, newest last",
        description="Recent decisions, newest last. --json prints one JSON document "
        "(with --follow: one JSON object per line).",
    )
    s.add_argument("--follow", "-f", action="store_true", help="keep printing new decisions")
    s.add_argument("--since", metavar="WHEN", help="15m, 2h, 7d, or an ISO time (UTC unless zoned)")
    s.add_argument(
        "--sender", metavar="ID", help="identity (sasl:alice@example.com), envelope sender or From"
    )
    s.add_argument("--action", choices=["accept", "quarantine", "tempfail", "reject"])
    s.add_argument("--limit", type=int, default=50, metavar="N", help="at most N rows (default 50)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_log)

    s = sub.add_parser(
        "keygen",
        help="make a DKIM key and print its DNS record",
        description="Write a new DKIM private key (mode 0600) to DIR/DOMAIN/SELECTOR.key and print "
        "its TXT record in zone-file form (strings split at 255, as opendkim-genkey does) and "
        "the policy line to add. Never overwrites a key.",
    )
    s.add_argument("domain", metavar="DOMAIN")
    s.add_argument("--selector", required=True, metavar="S", help="the DKIM selector, e.g. rsa2026")
    s.add_argument("--algorithm", choices=["rsa", "ed25519"], default="rsa", help="default rsa")
    s.add_argument(
        "--bits", type=int, metavar="N", help="RSA key size (default 2048; at least 1024)"
    )
    s.add_argument(
        "--dir",
        default="/etc/postwarden/keys",
        metavar="DIR",
        help="key folder (default /etc/postwarden/keys)",
    )
    s.set_defaults(fn=cmd_keygen)

    s = sub.add_parser(
        "import-opendkim",
        help="write a [domains] policy from an OpenDKIM configuration",
        description="Read OpenDKIM's KeyTable and SigningTable (or Domain, Selector and KeyFile) "
        "and write the equivalent [domains] policy file, keeping the same keys and selectors.",
    )
    s.add_argument(
        "--conf",
        default="/etc/opendkim.conf",
        metavar="PATH",
        help="opendkim.conf (default /etc/opendkim.conf)",
    )
    s.add_argument("--output", "-o", metavar="FILE", help="write here (default: standard output)")
    s.set_defaults(fn=cmd_import_opendkim)

    s = sub.add_parser(
        "dns-check",
        help="DNS health of the hosted domains: SPF, DKIM, DMARC, PTR, MX",
        description="Check SPF, DKIM keys, DMARC, PTR/FCrDNS and MX of the hosted domains (all "
        "when none is named), at [dns].nameservers. Each finding is pass, warn, fail or unknown "
        "(a timeout or SERVFAIL), with the fix for each failure. Results are kept for the TUI. "
        "Exit 1 when anything fails, 75 when DNS is unreachable.",
    )
    s.add_argument("domains", nargs="*", metavar="DOMAIN")
    s.add_argument("--json", action="store_true", help="one JSON document")
    s.add_argument(
        "--notify-changes",
        action="store_true",
        help="mail [rate].notify when a domain's status changed since the last run, with the "
        "fix (for the daily timer, deploy/postfix/postwarden-dns-check.timer); exit 75, and "
        "nothing recorded, when the mail cannot be sent",
    )
    s.set_defaults(fn=cmd_dns_check)

    s = sub.add_parser(
        "senders",
        help="sender identities, their counts against their caps, and locks",
        description="Each sender identity with mail counted in the last day (and every locked "
        "one): its counts against each cap, locked senders first.",
    )
    s.add_argument("--locked", action="store_true", help="only locked senders")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(fn=cmd_senders)

    s = sub.add_parser(
        "unlock",
        help="lift a sender's lock",
        description="Lift a sender's lock, recorded with who and why. Its held mail stays held "
        "until released.",
    )
    s.add_argument("sender", metavar="SENDER", help="the identity, e.g. sasl:alice@example.com")
    s.add_argument("--note", metavar="TEXT", help="why (kept in the audit log)")
    s.set_defaults(fn=cmd_unlock)

    s = sub.add_parser(
        "quarantine",
        help="held messages: list, show, release, delete",
        description="The quarantine is Postfix's hold queue ([postfix].config_directory). "
        "Release is postsuper -H (same queue id, no milter again); delete is postsuper -d. "
        "Bulk actions run one postsuper per batch; every action is audited.",
    )
    qsub = s.add_subparsers(dest="q_command", required=True, metavar="ACTION", parser_class=_Parser)
    m = qsub.add_parser(
        "list",
        help="held messages, oldest first, paged",
        description="Held messages: queue id, age, sender, From, recipients, reasons.",
    )
    m.add_argument("--sender", metavar="ID", help="an identity or envelope sender")
    m.add_argument("--page", type=int, default=1, metavar="N", help="page number (default 1)")
    m.add_argument("--per-page", type=int, default=50, metavar="N", help="rows a page (default 50)")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(fn=cmd_quarantine)
    m = qsub.add_parser(
        "show",
        help="a held message and its decision",
        description="The held message's headers and body (postcat) with its decision. Only a"
        " message in the hold queue is shown: anything not a Postfix queue id is refused (exit 2),"
        " a queue id not held too (exit 1). Control characters are printed as visible escapes.",
    )
    m.add_argument("queue_id", metavar="QUEUE_ID")
    m.set_defaults(fn=cmd_quarantine)
    for action, text in (
        ("release", "send held messages on (postsuper -H)"),
        ("delete", "delete held messages (postsuper -d)"),
    ):
        m = qsub.add_parser(
            action,
            help=text,
            description=f"{text[0].upper()}{text[1:]}, by queue id or by sender; audited.",
        )
        m.add_argument("queue_ids", nargs="*", metavar="QUEUE_ID")
        m.add_argument(
            "--sender", metavar="ID", help="every held message of this identity or envelope sender"
        )
        m.add_argument("--note", metavar="TEXT", help="why (kept in the audit log)")
        m.set_defaults(fn=cmd_quarantine)

    # ---- reports (reports.md) ----
    s = sub.add_parser(
        "reports",
        help="DMARC aggregate and TLS reports: pass rates, sources, the next DMARC step",
        description="Per domain, from the DMARC aggregate reports whose date range overlaps "
        "--since: messages reported, the share passing DMARC, SPF- and DKIM-aligned, the "
        "receivers' dispositions, the reporting organisations and report ids, a daily history; "
        "each source IP with its reverse name (asked at [dns].nameservers, cached a week, at "
        "most 8 seconds in all, left out when DNS does not answer) in one of three groups: this "
        "server ([server].addresses; any DKIM failure there is an alert), authorised elsewhere "
        "(aligned SPF or DKIM from another address), failing (neither aligns). Beside this "
        "server's count: how many messages postwarden signed for the domain over the reports' "
        "range. Then the next DMARC step, with the record to publish: move from none to "
        "quarantine to reject when reports cover [reports].ready_days distinct UTC days of the "
        "last ready_days + 1, at least ready_share of the mail passed DMARC and none of this "
        "server's failed DKIM. TLS reports: per policy domain, sessions and failures by type. "
        "`reports ingest` stores them.",
    )
    s.add_argument("--domain", metavar="D", help="only this policy domain")
    s.add_argument(
        "--since",
        metavar="WHEN",
        default="30d",
        help="30d (the default), 12h, or an ISO time: reports whose range overlaps count",
    )
    s.add_argument("--json", action="store_true", help="one JSON document")
    s.set_defaults(fn=cmd_reports)
    rsub = s.add_subparsers(
        dest="reports_command", required=False, metavar="ACTION", parser_class=_Parser
    )
    m = rsub.add_parser(
        "ingest",
        help="store DMARC aggregate and TLS reports (files, or an email on stdin)",
        description="Store DMARC aggregate reports (RFC 7489, the older draft, DMARCbis) and "
        "SMTP TLS reports (RFC 8460) from each FILE, or from standard input when none is named "
        "(the pipe service for the rua= address): a report email with the report attached "
        "(.zip, .gz, .xml, .json) or inline, or a bare .xml, .xml.gz, .zip, .json or .json.gz. "
        "XML is read without entities (defusedxml); archives are bounded (32 MiB decompressed, "
        "4 levels deep); a report never names a file to read or write. Each report is stored "
        "once per organisation and report id, the raw report kept gzipped; what cannot be read "
        "is stored as refused, with the reason on standard error. Reports received more than "
        "[store].retention_days days ago are pruned. Exit 0 stored or refused with a reason, 75 retry "
        "later (the database is locked or unwritable, or the configuration has an error: Postfix "
        "keeps the report instead of bouncing it), 2 a named file cannot be read.",
    )
    m.add_argument("files", nargs="*", metavar="FILE")
    m.add_argument("--json", action="store_true", help="one JSON document: each report's outcome")
    m.set_defaults(fn=cmd_reports)

    # ---- feedback loops and suppression (feedback.md) ----
    s = sub.add_parser(
        "feedback",
        help="feedback-loop reports: ingest them, complaint rates per domain",
        description='Feedback-loop reports (a recipient pressed "spam"): `ingest` stores them and '
        "suppresses the complained recipient, `stats` shows complaint rates.",
    )
    s.set_defaults(fn=cmd_feedback)
    fsub = s.add_subparsers(
        dest="feedback_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    m = fsub.add_parser(
        "ingest",
        help="store feedback-loop reports (files, or one message on stdin)",
        description="Store one feedback-loop report per FILE, or one from standard input (the "
        "pipe service for the FBL address): RFC 5965 ARF, a misspelt feedback part, a report "
        "nested in multipart/mixed, a forwarded message/rfc822 with no feedback part (taken as "
        "abuse), any line ends. The reported message's own headers say which message it was; "
        "it is joined to postwarden's decision of it (Message-ID, or the queue id in Postfix's "
        "Received line) for the sender identity and From domain. Each report is stored once, "
        "raw report kept; an abuse, fraud or virus report about a message postwarden sent to "
        "that recipient suppresses it for the From domain ([feedback].scope) and mails the sender (or [domains].contact) at most "
        "once per [feedback].notice_interval; not-spam suppresses nothing. Exit 0 stored or "
        "ignored with a reason (on standard error), 75 retry later (database locked, a file "
        "unreadable, a config error): never a code that bounces the report.",
    )
    m.add_argument("files", nargs="*", metavar="FILE")
    m = fsub.add_parser(
        "stats",
        help="complaints, delivered and their ratio per From domain, 7 and 30 days",
        description="Per From domain: complaints (abuse, fraud, virus) over the outbound "
        "messages postwarden accepted (its own notices not counted), last 7 and 30 days, and "
        "the active suppressions. A domain above [feedback].alert_rate over 7 days is flagged "
        "and reported to [rate].notify, once per day.",
    )
    m.add_argument("--domain", metavar="D", help="only this From domain")
    m.add_argument("--json", action="store_true", help="one JSON document")
    m.add_argument("--no-alert", action="store_true", help="show only; mail no alert")

    s = sub.add_parser(
        "suppression",
        help="suppressed recipients: list, add, remove (audited)",
        description="Recipients mail is not sent to: from complaints (feedback ingest) or "
        "added by hand. Over SMTP a suppressed recipient is refused at RCPT with why and since "
        "when; sendmail(1) mail has it removed and the sender told. Every add and remove is "
        "audited (locally). With [store].shared the list is the one in Redis every server "
        "shares.",
    )
    s.set_defaults(fn=cmd_suppression)
    ssub = s.add_subparsers(dest="s_command", required=True, metavar="ACTION", parser_class=_Parser)
    m = ssub.add_parser(
        "list",
        help="suppressed recipients, with why and since when",
        description="Active suppressions, newest first; with --domain, that domain's and the "
        "server-wide ones.",
    )
    m.add_argument("--domain", metavar="D", help="only entries that apply to this From domain")
    m.add_argument("--json", action="store_true", help="one JSON document")
    for action, text in (
        ("add", "suppress ADDRESS for --domain D, or for every domain without it"),
        ("remove", "lift the suppression of ADDRESS for --domain D, or every entry of it"),
    ):
        m = ssub.add_parser(action, help=text, description=f"{text[0].upper()}{text[1:]}; audited.")
        m.add_argument("address", metavar="ADDRESS")
        m.add_argument("--domain", metavar="D", help="the From domain it applies to")
        m.add_argument("--note", metavar="TEXT", help="why (kept in the audit log)")

    s = sub.add_parser(
        "tui",
        help="the admin terminal UI",
        description="The admin terminal UI over the same database and Postfix as these commands: "
        "decisions (live), the quarantine (view, release, delete), senders (unlock), domains "
        "(keys, DNS health, run a check), policy (edit, validate, save, reload) and reports (DMARC "
        "pass share per domain, a daily chart, the sources, the next step) and feedback (complaint "
        "rates per domain, suppressions: add, remove). Keys: 1-7 "
        "switch screens, ctrl+p opens the command palette, ctrl+q quits; each screen's keys "
        "are in its footer. Esc never confirms anything.",
    )
    s.add_argument(
        "--screen",
        choices=[
            "decisions",
            "quarantine",
            "senders",
            "domains",
            "policy",
            "reports",
            "streams",
            "feedback",
        ],
        default="decisions",
        help="the screen to open on (default decisions)",
    )
    s.set_defaults(fn=cmd_tui)

    s = sub.add_parser(
        "demo",
        help="the sandbox behind `make demo`",
        description="Start a private Postfix on 127.0.0.1 with postwarden and a sink, "
        "send scripted traffic and show the decisions; --stop stops it all.",
    )
    s.add_argument("--stop", action="store_true", help="stop every process the demo started")
    s.add_argument(
        "--workdir",
        default="/var/tmp/postwarden-demo",
        metavar="DIR",
        help="where the demo keeps its config, queue and sink (default /var/tmp/postwarden-demo)",
    )
    s.set_defaults(fn=cmd_demo)

    # ---- deploy: setup-postfix (src/postwarden/setup_postfix.py) ----
    from postwarden import setup_postfix

    setup_postfix.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except BrokenPipeError:
        return EX_OK
