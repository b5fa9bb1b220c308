# Two commands on a fresh Debian 12 machine, as root:
#   make demo   installs everything, starts the sandbox, sends scripted mail, shows decisions
#   make test   installs everything and runs ruff, mypy, the import contract and pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= /var/tmp/postwarden-demo
APT_PACKAGES := postfix libmilter-dev swaks sqlite3 procps opendkim opendkim-tools gcc make python3-dev python3-venv tmux dovecot-core libio-socket-ssl-perl libnet-ssleay-perl libauthen-sasl-perl prometheus redis-server

.PHONY: install deps-apt venv demo demo-stop test lint typecheck contract pytest bench bench-ab bench-dns bench-tui bench-reports bench-metrics bench-redis bench-cpu clean deb

install: deps-apt venv

# Preseeded "No configuration": the system Postfix stays unconfigured and unstarted; the demo
# and the tests run their own private instance.
deps-apt:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -q && apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/postwarden demo --workdir $(DEMO_DIR)

demo-stop:
	@if [ -x $(BIN)/postwarden ]; then $(BIN)/postwarden demo --stop --workdir $(DEMO_DIR); \
	else echo "nothing to stop: the demo was never installed"; fi

test: install lint typecheck pytest

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest -q

# postwarden against OpenDKIM and no milter on one private Postfix; writes docs/benchmarks.md.
# About 10 minutes on 2 cores (BENCH_REPS, BENCH_MESSAGES, BENCH_SESSIONS, BENCH_MEMORY).
bench: install
	$(BIN)/python bench/run.py

# The milter's own CPU per message in one process (no Postfix): this tree against BENCH_AGAINST
# (a git revision) side by side in one run; writes its section of docs/benchmarks.md.
BENCH_AGAINST ?= 3582fc3
bench-cpu: install
	$(BIN)/python bench/cpu.py --against $(BENCH_AGAINST) --write

# postwarden variants (this tree, git revisions, each with its own environment) side by side on
# one private Postfix, interleaved, beside OpenDKIM: try a change end to end before keeping it.
# Prints only (BENCH_AB: bench/ab.py's arguments; about 6 minutes as it stands).
BENCH_AB ?= --variant tree=. --variant head=HEAD --reps 3
bench-ab: install
	$(BIN)/python bench/ab.py $(BENCH_AB)

# dns-check over 100 domains against a loopback DNS server that delays every answer by 100 ms.
bench-dns: install
	$(BIN)/python bench/dns_check_100.py

# The TUI over 1,000,000 decisions and 100,000 held messages: time to first paint, next page,
# and the UI's worst stall; writes docs/tui-benchmark.md (about 30 seconds).
bench-tui: install
	$(BIN)/python bench/tui.py

# ---- metrics (issue 20) ----
# Decision time p50/p99 under a 20-session load, with and without a scraper on /metrics every
# 0.1 s; its own section of docs/benchmarks.md (about 6 minutes: BENCH_REPS, BENCH_MESSAGES,
# BENCH_SESSIONS, BENCH_SCRAPE_S).
bench-metrics: install
	$(BIN)/python bench/metrics.py

# The rate store's cost per message, SQLite beside Redis (TCP and unix socket) from one run:
# writes its own section of docs/benchmarks.md (issue 19; under a minute, BENCH_REDIS_MESSAGES).
bench-redis: install
	$(BIN)/python bench/redis_store.py

# ---- deploy: the Debian package (deploy/debian/) ----
# dist/postwarden_<version>_<arch>.deb: the venv under /opt/postwarden built here from wheels,
# so the mail server needs no compiler. Install with `dpkg -i` (README: Installing on a mail server).
deb: install
	bash deploy/debian/build.sh

# Reports: ingest of 1,000 DMARC aggregate reports, then `postwarden reports` over them, timed;
# writes its section of docs/benchmarks.md (about a minute).
bench-reports: install
	$(BIN)/python bench/reports.py

clean: demo-stop
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
