"""[milter].releaser (streams.md's releaser, added to the spec): "thread" (default: the daemon
releases paced and warm-up holds itself, as `make demo` and the tests run it, as root) or
"service" (the daemon starts no releaser; `postwarden releaser`, run as root, does). The daemon's
side is shown end to end: tests/e2e/test_pacing.py (thread) and test_releaser_service.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwarden.cli import main
from postwarden.config import ConfigError, load_config
from postwarden.milter.releaser import in_daemon
from tests.helpers import write_config


def config_with(tmp_path: Path, mode: str | None) -> Path:
    cfg = write_config(tmp_path)
    if mode is not None:
        text = cfg.read_text()
        assert 'user = "root"\n' in text
        cfg.write_text(text.replace('user = "root"\n', f'user = "root"\nreleaser = "{mode}"\n', 1))
    return cfg


@pytest.mark.parametrize(
    ("mode", "in_the_daemon"), [(None, True), ("thread", True), ("service", False)]
)
def test_the_mode_says_whether_the_daemon_starts_the_releaser(
    tmp_path: Path, mode: str | None, in_the_daemon: bool
) -> None:
    daemon = load_config(config_with(tmp_path, mode)).daemon
    assert daemon.milter.releaser == (mode or "thread")
    assert in_daemon(daemon) is in_the_daemon


def test_an_unknown_mode_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    cfg = config_with(tmp_path, "cron")
    with pytest.raises(ConfigError) as exc:
        load_config(cfg)
    problems = [str(p) for p in exc.value.problems]
    assert len(problems) == 1 and problems[0].startswith(f"{cfg}: milter.releaser: "), problems
    assert "'thread' or 'service'" in problems[0]


@pytest.mark.parametrize("mode", [None, "thread"])
def test_the_releaser_command_refuses_to_run_beside_a_releasing_daemon(
    tmp_path: Path, mode: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never two releasers over one schedule: in "thread" mode the command exits 78 at once."""
    cfg = config_with(tmp_path, mode)
    assert main(["--config", str(cfg), "releaser"]) == 78
    out = capsys.readouterr().out
    assert '[milter].releaser = "thread": the milter releases' in out
    assert 'set it to "service"' in out


def test_the_releaser_command_reports_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config_with(tmp_path, "service")
    cfg.write_text(cfg.read_text().replace("[milter]\n", "[milter]\nsockt = 1\n", 1))
    assert main(["--config", str(cfg), "releaser"]) == 78
    assert "milter.sockt" in capsys.readouterr().out
