# Two commands for a newcomer: `make run` and `make test`. Both set up .venv first (`make install`).
# `make test-fast` is the inner loop: the tests that need no slow resource, in about a minute.
PYTHON ?= python3
# The tests start ~80-100 Python processes (services, their workers, child processes, Ray workers, MLflow
# servers), each importing torch, SB3 and MLflow. With PYTHONDONTWRITEBYTECODE set (this machine's
# environment sets it, as does the Dockerfile for the image) Python keeps no .pyc, so every one of them
# compiled those ~3,700 modules again: `import main` took 19.4 s of CPU, 6.9 s with the .pyc kept
# (measured here, 2026-12-02). Every target here lets Python keep its bytecode (in .venv and the checkout).
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RAY_STAMP := $(VENV)/.ray-installed-stamp
# pip byte-compiles everything it installs on one core (half of a fresh install's ~2.5 min here). The
# tests, the service and its tools import ~3,700 of the ~19,600 modules installed: Python compiles those
# at their first import and keeps the .pyc files, so compiling the rest up front is wasted time.
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q --no-compile

.PHONY: install install-ray system-deps run test test-fast lint format typecheck unit bench bench-full bench-gpu clean

install: $(STAMP)

# Ray (EXECUTOR=ray) is large (~80 MB wheel): installed for the tests, and for `make run` only when
# EXECUTOR=ray (environment or .env).
install-ray: $(RAY_STAMP)

$(RAY_STAMP): $(STAMP) requirements-ray.txt constraints.txt
	$(PIP_INSTALL) -r requirements-ray.txt -c constraints.txt
	@touch $(RAY_STAMP)

# Re-installs only when a requirements file changed; otherwise instant.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=python3.11)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) -r requirements-dev.txt -c constraints.txt
	@touch $(STAMP)

# PostgreSQL and Chromium for the tests that drive them (installed only where missing; needs root + apt).
system-deps:
	@bash scripts/install-system-deps.sh

run: install
	@if [ "$${EXECUTOR:-$$(sed -n 's/^EXECUTOR=//p' .env 2>/dev/null)}" = ray ]; then $(MAKE) --no-print-directory install-ray; fi
	$(PY) main.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: install install-ray
	$(VENV)/bin/mypy .

# pytest-xdist workers: one test at a time mostly keeps one core busy (a service training on one
# thread, a browser, a server starting), so two workers use both cores of a 2-core machine.
# `--dist loadfile` keeps a module's tests on one worker, so module-scoped services and clusters start
# once; tests/conftest.py hands out the longest modules first. Measured back to back on a quiet 2-core
# machine (2026-12-03, 576 tests): one process 1,164 s of pytest (1.07 cores busy), two workers 708 s
# (1.85 cores busy). PYTEST_WORKERS=0 runs everything in one process (easier to read a failure).
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

# --durations=30: CI's log lists the 30 slowest tests (set-up and teardown apart), to watch the time budget.
unit: install install-ray
	$(PYTEST) --durations=30

# mypy (about a minute of one core on a fresh checkout) runs beside pytest rather than before it: the
# two pytest workers leave some CPU idle (services starting, waits), which mypy fills. Its report follows
# pytest's; either failing fails the target.
test: system-deps lint install install-ray
	@$(MAKE) --no-print-directory typecheck > $(VENV)/mypy-report.txt 2>&1 & mypy_pid=$$!; \
	$(MAKE) --no-print-directory unit; tests=$$?; \
	wait $$mypy_pid; types=$$?; \
	cat $(VENV)/mypy-report.txt; \
	if [ $$tests -ne 0 ] || [ $$types -ne 0 ]; then exit 1; fi

# Markers registered in pyproject.toml; `make test` (CI) still runs every test.
SLOW_MARKERS := postgres or mlflow_server or ray or browser or service or training or learning

test-fast: install
	$(PY) -m pytest -n $${PYTEST_WORKERS:-2} --dist loadfile -m "not ($(SLOW_MARKERS))"

bench: install install-ray
	$(PY) -m bench.run --quick

bench-full: install install-ray
	$(PY) -m bench.run

# Needs a CUDA GPU and the CUDA build of torch (README "CUDA"); not part of `make bench`.
bench-gpu: install
	$(PY) -m bench.bench_gpu

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
