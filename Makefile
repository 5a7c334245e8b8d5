# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo

.PHONY: demo test install bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[dev,hf,plot]'
	touch $(STAMP)

demo: $(STAMP)
	PY=$(PY) DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache .ruff_cache
