# Two commands matter (see README): `make demo` and `make test`. Both depend on
# `install`, which is cheap when nothing changed (a stamp file tracks pyproject.toml).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# System packages the tests need (installed with apt-get when missing): the MQTT broker the agent
# and registry tests start on a free port, PostgreSQL for the registry, Chromium for the dashboard,
# Prometheus (with promtool) and Alertmanager (with amtool) for the metrics, alert-rule and config tests.
APT_PACKAGES := mosquitto postgresql chromium prometheus prometheus-alertmanager

.PHONY: install system-deps demo test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[build,prune,tflite,mcu,coreml,agent,registry,dev]'
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: install
	$(BIN)/edgectl demo --out demo-out

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/build_targets.py

clean:
	rm -rf demo-out build .pytest_cache
