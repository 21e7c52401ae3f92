# make train   — create .venv if missing, install, train the embedded default (configs/default.yaml)
# make test    — create .venv if missing, install, run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; GPU users install their CUDA build of torch first, then `pip install -e .`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install train test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,wandb]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python train.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
