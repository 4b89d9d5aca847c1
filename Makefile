# Everything starts here: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint clients postgres bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kela-broker --home . run

lint: $(STAMP)
	$(BIN)/ruff check broker adapters schemas tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# lftp and rclone are clients many municipal integrations script; their end-to-end
# tests need them (Debian's packages, installed when run as root).
CLIENT_PACKAGES := lftp rclone
clients:
	@missing=""; for p in $(CLIENT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		{ [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null 2>&1; } || \
		echo "note: could not install$$missing; their tests are skipped"; fi

# The storage tests also run on PostgreSQL, on a throwaway cluster that the tests start and
# stop themselves (tests/pg_cluster.py): they need the server's initdb, pg_ctl and postgres
# (Debian's package, installed when run as root), not a running service.
postgres:
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		{ [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq postgresql) >/dev/null 2>&1; } || \
		echo "note: could not install PostgreSQL; its test runs are skipped"; fi

test: lint clients postgres
	$(BIN)/pytest -q -n 2 tests

bench: $(STAMP)
	@command -v xmllint >/dev/null || (apt-get update -qq && apt-get install -y -qq libxml2-utils)
	@test -x /usr/sbin/sshd || (apt-get update -qq && apt-get install -y -qq openssh-server)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
