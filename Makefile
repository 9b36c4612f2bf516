# Menwei: `make demo` runs the main job, `make test` the whole suite. Both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-deps lint typecheck pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	./scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/menwei demo $(DEMO_ARGS)

test: install test-deps lint typecheck pytest

test-deps:
	./scripts/install-system-deps.sh --test

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy protocol drivers edge server menwei

pytest: install
	$(BIN)/pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/menwei bench decode --dataset ../shared/datasets/qr-photos --json
	$(BIN)/menwei bench field --json
	$(BIN)/menwei bench gate --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
