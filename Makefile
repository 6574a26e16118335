# Entry points for a fresh machine (see README):
#   make proxy   install taskmeter and run the metering proxy
#   make test    install taskmeter with its test tools (and, when missing, Debian's chromium, systemd, zsh, fish and PostgreSQL, and the Codex, Gemini and Claude Code CLIs), lint (ruff), type-check (mypy) and run the tests
#   make check   lint, type-check and run the fast tests only: those that start no process (not marked e2e, browser or bench)
#   make lock    regenerate requirements-run.lock and requirements-test.lock from pyproject.toml (hashes, every platform)
# Each installs into ./.venv from the pinned lock files (hashes checked), only when they changed.

PYTHON := $(shell scripts/find-python)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

# The tests run in this many processes (pytest-xdist), each test file whole in one of them, handed
# out in the order tests/conftest.py sets: the slowest first (not xdist's: the most tests first).
# Twice the 2 cores: a test that starts processes waits on them for about 40% of its time, which the
# other workers fill (the whole suite took 507 s of pytest in 2 processes, 365 s in 4; since the tests'
# proxies are forks, 280 s in 4 and 273 s in 6).
JOBS ?= 4
# The fast tests start no process and wait on nothing: a process per core.
CHECK_JOBS ?= 2
DIST := --dist loadfile --no-loadscope-reorder
# The meter's modules compiled once, not by each process a test starts (PYTHONDONTWRITEBYTECODE may be set).
COMPILE := $(BIN)/python -m compileall -q taskmeter bench
FAST := -m "not e2e and not browser and not bench"
# pytest rewrites each test module's asserts (3 s of CPU for the whole tree) and keeps the result in
# __pycache__ for the next run, unless PYTHONDONTWRITEBYTECODE is set: the tests run with it unset.
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest

.PHONY: proxy test check bench bench-team install install-test lock clean

proxy: install
	$(BIN)/meter proxy $(ARGS)

test: install-test
	scripts/ensure-chromium
	scripts/ensure-systemd
	scripts/ensure-agent-clis
	scripts/ensure-shells
	scripts/ensure-postgresql
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(COMPILE)
	$(PYTEST) -n $(JOBS) $(DIST) $(ARGS)

check: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PYTEST) -n $(CHECK_JOBS) $(FAST) $(ARGS)

bench: install-test
	$(BIN)/python -m bench $(ARGS)

# The team store's sync on a real PostgreSQL (docs/team.md): writes docs/team-benchmarks.json.
bench-team: install-test
	scripts/ensure-postgresql
	$(BIN)/python -m bench.team $(ARGS)

install: $(VENV)/.run-installed
install-test: $(VENV)/.test-installed

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "no Python >= 3.12 found; see above" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Every dependency from the lock, each checked against its hashes; then taskmeter itself, editable.
$(VENV)/.run-installed: $(BIN)/python requirements-run.lock pyproject.toml
	$(PIP) --require-hashes -r requirements-run.lock
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

# The wheelhouse: the run lock's wheels for this platform, from which tests/test_wheel_install.py
# installs the built wheel into fresh environments offline.
$(VENV)/.test-installed: $(VENV)/.run-installed requirements-test.lock
	$(PIP) --require-hashes -r requirements-test.lock
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --require-hashes --only-binary :all: \
		-r requirements-run.lock -d $(VENV)/wheelhouse
	touch $@

# Regenerate both lock files after changing pyproject.toml's dependencies (scripts/lock).
lock: install-test
	scripts/lock

clean:
	rm -rf $(VENV)
