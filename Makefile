# The two commands a new user needs:
#   make up     set up, then run the service on one machine (SQLite, embedded broker)
#   make test   set up, then run the whole test suite (real Redis, PostgreSQL, uvicorn, Celery)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
# nnInteractive's inference session (models/interactive/nninteractive.py), 680 KB of Python. Without its
# dependencies: it declares nnunetv2>=2.7, which would replace the nnunet extra's 2.6.0 and pull
# dynamic-network-architectures 0.4 with a torchvision that does not load beside the pinned torch; what its
# session imports (acvl-utils, batchgenerators, blosc2, nnunetv2) comes with the nnunet extra.
NNINTERACTIVE := nninteractive==2.6.0
LESION_REFERENCES := panoptica==2.1.7 brats-evaluation==0.0.10 connected-components-3d==3.29.0 \
	ruamel.yaml==0.19.1 plotly==5.24.1 tenacity==9.2.1

.PHONY: up test setup setup-test viewer-deps models lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned (pyproject) to 2.13.0; installing it in the same command as monai keeps pip from
# resolving a newer torch with several GB of CUDA wheels.
$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test,nnunet]"
	# Lesion-wise reference implementations for tests/evaluation/test_lesionwise_reference.py. Without their
	# dependencies: they pin numpy<2.3 and pandas<3, which would move the project's numpy and pandas; they
	# run with ours (checked), and what they import is listed here.
	$(BIN)/pip install --quiet --no-deps $(LESION_REFERENCES)
	$(BIN)/pip install --quiet --no-deps $(NNINTERACTIVE)
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
