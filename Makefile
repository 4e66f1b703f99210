# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is installed first and pinned: our CI machines keep a CPU wheel of this release on disk,
# and an unpinned `torch` resolves to the newest (multi-GB CUDA) build. Override for your machine,
# e.g. make test TORCH="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

.PHONY: test demo lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check mmllm_sdk tests examples
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check mmllm_sdk tests examples
	$(BIN)/ruff format --check mmllm_sdk tests examples

format: $(STAMP)
	$(BIN)/ruff format mmllm_sdk tests examples
	$(BIN)/ruff check --fix mmllm_sdk tests examples

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/tiny_demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
