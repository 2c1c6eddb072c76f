# `make demo` and `make test` each build .venv on first use, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: this exact release is a local CPU build on CPU machines.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# The converted tokenizers' reference implementations, for their tests only. Without their
	# dependencies: those would pull another torch build (torchvision) and tools they never use.
	$(PY) -m pip install --quiet --no-deps DALL-E==0.1 taming-transformers-rom1504==0.0.6
	touch $@

demo: $(VENV)/.installed
	$(PY) train.py demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The web page on the demo's run, at http://127.0.0.1:7860
serve: $(VENV)/.installed
	$(PY) -m dalle1 serve --run runs/demo/dalle

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# Build outputs only: trained runs (runs/) and data (data/) are never deleted.
clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
