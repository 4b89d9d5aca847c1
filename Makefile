# Everything starts here: `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint clients bench clean

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

# lftp is one of the SFTP clients integrators use; its end-to-end test needs it.
clients:
	@command -v lftp >/dev/null || { [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq lftp) >/dev/null 2>&1; } || \
		echo "note: could not install lftp; its test is skipped"

test: lint clients
	$(BIN)/pytest -q -n 2 tests

bench: $(STAMP)
	@command -v xmllint >/dev/null || (apt-get update -qq && apt-get install -y -qq libxml2-utils)
	@test -x /usr/sbin/sshd || (apt-get update -qq && apt-get install -y -qq openssh-server)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
