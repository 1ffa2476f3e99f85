# One entry point for developers, CI and the demo. Debian 12; root for the apt step.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
APT_PACKAGES := mosquitto mosquitto-clients socat openssl nftables iproute2 gcc pkg-config \
	libsystemd-dev python3-dev python3-venv
PYTEST_ARGS ?=

.PHONY: deps venv lint test demo bench docs clean

deps:  ## Debian packages the tests and the demo need (skipped when all are installed)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: venv  ## ruff, ruff format --check, mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: deps venv lint  ## everything CI runs
	$(PY) -m pytest $(PYTEST_ARGS)

demo: deps venv  ## a broker, a simulated device and the daemon; Ctrl-C stops all
	$(VENV)/bin/gatewayd demo

bench: deps venv  ## benchmarks; results go to docs/benchmarks.md
	$(PY) -m benchmarks

docs: venv  ## regenerate docs/configuration.md and config/gatewayd.example.yaml
	$(PY) -m gatewayd.config_docs

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
