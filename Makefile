# One entry point for developers, CI and the demo. Debian 12; root for the apt step.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
APT_PACKAGES := mosquitto mosquitto-clients socat openssl nftables iproute2 gcc pkg-config \
	libsystemd-dev python3-dev python3-venv
DEB_BUILD_PACKAGES := dh-virtualenv debhelper dpkg-dev lintian python3-venv python3-dev gcc \
	pkg-config libsystemd-dev
PYTEST_ARGS ?=

.PHONY: deps venv lint test demo bench docs clean deb-deps deb package-check constraints

# $(call apt_install,PACKAGES): install those of PACKAGES that are missing, and leave the
# host's services as they were: no service starts during the install (a policy-rc.d that
# denies starts, unless the host has its own), and a unit that the install enabled (Debian
# enables a packaged service, e.g. mosquitto.service) is disabled again. Units the host had
# enabled before stay enabled; the demo and the tests start their own broker.
SYSTEMD_ETC ?= /etc/systemd/system
POLICY_RC_D ?= /usr/sbin/policy-rc.d
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq || exit 1; \
		enabled() { find $(SYSTEMD_ETC) -path '*.wants/*' -printf '%f\n' 2>/dev/null | sort -u; }; \
		before=$$(enabled); policy=; \
		if [ ! -e $(POLICY_RC_D) ]; then \
			printf '%s\n' '#!/bin/sh' 'exit 101' | $$SUDO tee $(POLICY_RC_D) >/dev/null \
				&& $$SUDO chmod 755 $(POLICY_RC_D) && policy=ours; \
		fi; \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			$$missing; status=$$?; \
		if [ "$$policy" = ours ]; then $$SUDO rm -f $(POLICY_RC_D); fi; \
		[ $$status = 0 ] || exit $$status; \
		new=; for unit in $$(enabled); do \
			printf '%s\n' "$$before" | grep -qxF "$$unit" || new="$$new $$unit"; done; \
		if [ -n "$$new" ]; then \
			echo "disabling what the install enabled:$$new"; \
			if command -v systemctl >/dev/null; then $$SUDO systemctl disable --quiet $$new; \
			else $$SUDO deb-systemd-helper disable $$new; fi; \
			if [ -d /run/systemd/system ]; then $$SUDO systemctl stop $$new || true; fi; \
		fi; \
	fi
endef

deps:  ## Debian packages the tests and the demo need (skipped when installed); no service started
	$(call apt_install,$(APT_PACKAGES))

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

deb-deps:  ## Debian packages building the .deb needs (skipped when all are installed)
	$(call apt_install,$(DEB_BUILD_PACKAGES))

deb: deb-deps  ## build packaging/build/gatewayd_<version>_<arch>.deb (Debian 12)
	packaging/build-deb.sh

package-check:  ## build, lintian, install, run, upgrade and purge the .deb (root; CI runs it)
	packaging/check.sh

constraints:  ## re-pin packaging/constraints.txt to pyproject.toml's dependencies, resolved now
	rm -rf packaging/build/pin-venv
	/usr/bin/python3 -m venv packaging/build/pin-venv
	packaging/build/pin-venv/bin/pip install -q .
	{ sed -n '/^#/p' packaging/constraints.txt; packaging/build/pin-venv/bin/pip freeze \
		--exclude gatewayd --exclude pip --exclude setuptools; } > packaging/constraints.txt.new
	mv packaging/constraints.txt.new packaging/constraints.txt
	rm -rf packaging/build/pin-venv

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache packaging/build
