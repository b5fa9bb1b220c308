"""`postwarden log`, `reload` and `db migrate`: output, filters, and what each bad input gets."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from postwarden.cli import main, parse_since
from postwarden.config import load_config
from postwarden.store import migrate, open_db
from tests.helpers import write_config
from tests.unit.test_store import row


@pytest.fixture
def cfg_with_rows(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path)
    db = open_db(load_config(cfg).daemon.store.database)
    migrate(db)
    now = datetime.now(UTC)
    for i in range(10):
        db.table("decisions").insert(row(i, now - timedelta(hours=10 - i)))
    return cfg


def test_log_prints_newest_last_with_queue_ids(
    cfg_with_rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(cfg_with_rows), "log", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["Q7", "Q8", "Q9"]


def test_log_filters_and_json(cfg_with_rows: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(cfg_with_rows), "log", "--action", "reject", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["queue_id"] for r in rows] == ["Q0", "Q5"]
    assert set(rows[0]) >= {
        "time",
        "queue_id",
        "identity",
        "action",
        "reasons",
        "rcpts",
        "policy_hash",
    }
    assert main(["--config", str(cfg_with_rows), "log", "--since", "3h", "--json"]) == 0
    assert [r["queue_id"] for r in json.loads(capsys.readouterr().out)] == ["Q8", "Q9"]
    assert (
        main(
            ["--config", str(cfg_with_rows), "log", "--sender", "sasl:user1@example.com", "--json"]
        )
        == 0
    )
    assert [r["queue_id"] for r in json.loads(capsys.readouterr().out)] == ["Q1", "Q4", "Q7"]
    assert main(["--config", str(cfg_with_rows), "log", "--action", "quarantine"]) == 0
    assert capsys.readouterr().out.strip() == "no decisions match"


def test_log_without_a_database_is_a_temporary_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(write_config(tmp_path)), "log"]) == 75
    assert "no database yet" in capsys.readouterr().err


def test_commands_on_an_invalid_config_exit_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, "[defaults]\nbogus = 1\n")
    for command in (["log"], ["reload"], ["db", "migrate"]):
        with pytest.raises(SystemExit) as exc:
            main(["--config", str(cfg), *command])
        assert exc.value.code == 78
        assert "defaults.bogus: unknown key" in capsys.readouterr().err


def test_reload_when_the_daemon_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(write_config(tmp_path)), "reload"]) == 75
    assert "postwarden is not running" in capsys.readouterr().err


def test_db_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert main(["--config", str(cfg), "db", "migrate"]) == 0
    assert "applied 001_decisions" in capsys.readouterr().out
    assert main(["--config", str(cfg), "db", "migrate"]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("15m", "2026-11-23T09:45:00+00:00"),
        ("2h", "2026-11-23T08:00:00+00:00"),
        ("7d", "2026-11-16T10:00:00+00:00"),
        ("2026-11-23T08:30", "2026-11-23T08:30:00+00:00"),
        ("2026-11-23T08:30+01:00", "2026-11-23T07:30:00+00:00"),
    ],
)
def test_parse_since(text: str, expected: str) -> None:
    assert parse_since(text, datetime(2026, 11, 23, 10, 0, tzinfo=UTC)) == expected


def test_parse_since_rejects_nonsense() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="use 15m, 2h, 7d"):
        parse_since("yesterday", datetime(2026, 11, 23, tzinfo=UTC))


def test_log_with_a_bad_since_is_a_usage_error(
    cfg_with_rows: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(cfg_with_rows), "log", "--since", "yesterday"]) == 2
    assert "use 15m, 2h, 7d or an ISO time" in capsys.readouterr().err
