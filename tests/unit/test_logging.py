"""The daemon's log (issue 21): one thread writes it, and nothing logged is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_every_line_of_many_threads_is_written_once_and_the_last_before_exit() -> None:
    out = _run(
        """
        import logging, threading
        from postwarden.milter.daemon import setup_logging
        setup_logging("stderr", "info")
        log = logging.getLogger("postwarden")
        def many(t):
            for i in range(500):
                log.info("t%d line %d", t, i)
        threads = [threading.Thread(target=many, args=(t,)) for t in range(20)]
        for t in threads: t.start()
        for t in threads: t.join()
        log.info("the last line")
        """
    )
    lines = out.stderr.splitlines()
    assert len(lines) == 20 * 500 + 1 and lines[-1].endswith(": the last line")
    assert all(line.startswith("postwarden[") for line in lines)
    for t in range(20):  # each thread's lines in its order
        mine = [int(x.rsplit(" ", 1)[1]) for x in lines if f": t{t} line " in x]
        assert mine == list(range(500))


def test_the_writing_thread_takes_none_of_the_daemon_s_signals() -> None:
    """The main thread takes them all (daemon.py): libmilter's and ours are blocked."""
    out = _run(
        """
        import logging, signal
        from postwarden.milter import daemon
        daemon.setup_logging("stderr", "info")
        listener = daemon._LISTENER
        blocked = []
        listener.handlers[0].emit = lambda record: blocked.append(
            signal.pthread_sigmask(signal.SIG_BLOCK, [])
        )
        logging.getLogger("postwarden").info("x")
        daemon._stop_logging()
        assert daemon.HANDLED_SIGNALS <= set(blocked[0]), blocked
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & daemon.HANDLED_SIGNALS
        print("ok")
        """
    )
    assert out.stdout.strip() == "ok"
