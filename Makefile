# The two commands a new user needs:
#   make up     set up, then run the service on one machine (SQLite, embedded broker)
#   make test   set up, then run the whole test suite (real Redis, PostgreSQL, uvicorn, Celery)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared

.PHONY: up test setup setup-test viewer-deps models lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned (pyproject) to 2.13.0; installing it in the same command as monai keeps pip from
# resolving a newer torch with several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test,nnunet]"
	touch $@

setup: $(VENV)/.installed

# The viewer's browser code (NiiVue, pinned in package.json / package-lock.json), served by the API from
# node_modules; never committed.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# `up` serves the viewer when npm is there; without it the API runs and /viewer says what is missing.
viewer-deps:
	@if command -v npm >/dev/null; then $(MAKE) --no-print-directory node_modules/.package-lock.json; \
	 else echo "npm not found: the /viewer page needs 'npm ci' (NiiVue)"; fi

setup-test: setup node_modules/.package-lock.json

# Copy the pretrained weights into the models directory when a shared/models folder is next to us.
models: setup
	@if [ -d "$(SHARED)/models" ]; then $(BIN)/segserve models install "$(SHARED)/models"; \
	 else echo "no $(SHARED)/models here: install weights with 'segserve models install PATH'"; fi

up: models viewer-deps
	$(BIN)/segserve up

test: setup-test
	bash scripts/test.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
