# The README's two commands: `make demo` and `make test`. Each creates the virtual environment
# and installs everything it needs, so both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench corpus clean

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py --out docs/benchmarks.md
	$(PY) benchmarks/async_stall.py >> docs/benchmarks.md
	$(PY) benchmarks/sharded.py >> docs/benchmarks.md
	$(PY) benchmarks/distributed.py >> docs/benchmarks.md
	$(PY) benchmarks/incremental.py >> docs/benchmarks.md
	$(PY) benchmarks/remote.py >> docs/benchmarks.md

# Other projects' hostile files (not in the repository), each run as it is and wrapped in every
# pickle-carrying container, one sandboxed process per case (not part of `make test`).
CORPUS ?= ../shared/corpora
corpus: $(STAMP)
	$(PY) benchmarks/corpus.py $(CORPUS) --jobs 2

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
