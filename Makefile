# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: demo test install clean-venv

$(VENV)/.installed-core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-core
	$(PIP) install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed-core

demo: $(VENV)/.installed-core
	$(VENV)/bin/reidkit demo --output runs/demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
