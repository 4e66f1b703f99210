# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU wheel of torch; a bare `torch` resolves to a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
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
