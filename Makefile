# Two entry points, both self-installing: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# flux_tui's bytecode, written at install: an editable install leaves it to the first start, and where the
# environment sets PYTHONDONTWRITEBYTECODE (as many container images do) every start would compile the
# dashboard's ~50 modules from source again (~50 ms before the first frame, bench/tui_load.py).
BYTECODE := $(VENV)/.bytecode

.PHONY: demo test lint screenshots bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

$(BYTECODE): $(STAMP) $(shell find flux_tui -name '*.py')
	$(PY) -m compileall -q flux_tui
	touch $(BYTECODE)

demo: $(BYTECODE)
	$(VENV)/bin/flux-tui demo

lint: $(BYTECODE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest

screenshots: $(BYTECODE)
	$(PY) scripts/screenshots.py

bench: $(BYTECODE)
	$(PY) bench/tui_load.py
