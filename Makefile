# The two commands a new user needs:
#   make up     set up, then run the service on one machine (SQLite, embedded broker)
#   make test   set up, then run the whole test suite (real Redis, PostgreSQL, uvicorn, Celery)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared

.PHONY: up test setup setup-test models lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned (pyproject) to 2.13.0; installing it in the same command as monai keeps pip from
# resolving a newer torch with several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# Copy the pretrained weights into the models directory when a shared/models folder is next to us.
models: setup
	@if [ -d "$(SHARED)/models" ]; then $(BIN)/segserve models install "$(SHARED)/models"; \
	 else echo "no $(SHARED)/models here: install weights with 'segserve models install PATH'"; fi

up: models
	$(BIN)/segserve up

test: setup
	bash scripts/test.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
