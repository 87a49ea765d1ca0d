# Two entry points: `make demo` (install, then run the offline demo) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install browser demo test test-fast lint docs bench clean

$(BIN)/multiguard: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,diffusion,serve]"
	touch $(BIN)/multiguard

# The browser test of the serve page drives Debian's chromium (no browser download); without root or apt it is
# skipped with its reason.
browser:
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq chromium; } || \
		echo "make install: no chromium (apt-get install chromium): the browser test of the serve page will skip"

install: $(BIN)/multiguard browser

demo: install
	$(BIN)/multiguard demo

# The suite runs in one worker per core (pytest-xdist), each test file on one worker so that its module fixtures
# are made once; the 15 slowest tests are listed at the end.
test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mkdocs build --strict --site-dir $(or $(TMPDIR),/tmp)/multiguard-site
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

# The documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or reference.
docs: install
	$(BIN)/mkdocs build --strict

# The inner loop: every test not marked slow (the end-to-end ones): 761 tests in about 4.5 minutes on 2 cores
# (the whole suite, `make test`, about 8 minutes of tests).
test-fast: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_certify.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info
