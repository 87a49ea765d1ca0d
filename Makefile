# Two entry points: `make demo` (install, then run the offline demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint docs bench clean

$(BIN)/multiguard: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,diffusion]"
	touch $(BIN)/multiguard

install: $(BIN)/multiguard

demo: install
	$(BIN)/multiguard demo

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --site-dir $(or $(TMPDIR),/tmp)/multiguard-site
	$(BIN)/python -m pytest -q

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or reference.
docs: install
	$(BIN)/mkdocs build --strict

# The inner loop: every test not marked slow (the end-to-end ones), in about a minute.
test-fast: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_certify.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info
