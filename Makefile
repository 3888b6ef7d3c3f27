# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install everything from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test lint typecheck postgres system-deps clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

demo: install
	$(BIN)/atoll demo

# The tests need the local PostgreSQL server: start it if it is down.
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
	  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1

# Debian packages the security and fault tests run for real: nginx (fleet proxy), tcpdump
# (capture test), iproute2 (`ip netns`, veth links, `ss`: separate hosts in tests/test_faults_hosts.py).
system-deps:
	@command -v nginx >/dev/null 2>&1 && command -v tcpdump >/dev/null 2>&1 && \
	  command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light tcpdump iproute2)

test: install postgres system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
