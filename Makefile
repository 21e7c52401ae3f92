# make train   — create .venv if missing, install, train the embedded default (configs/train/default.yaml: the toy world)
# make test    — create .venv if missing, install, run the unit tests (minutes)
# make test-all — the whole suite: unit tests, then the slow tier (end-to-end runs, the toy default's quality,
#                 every documented command, the installed wheel)
# make parity  — build .venv-parity once (torch + torchvision + open_clip + timm + the upstream reward wheels,
#                ~6 GB, ~4 min cold) and check our rewards against the official scoring code there
# make gpu-check — on a CUDA machine: SD1.5-shaped random weights at 512² (no download, <= 8 min), step time,
#                  MFU, memory, bf16 vs fp32, per-prompt batching, a DDP fit and resume; writes gpu-check.json
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; GPU users install their CUDA build of torch first, then `pip install -e .`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# The upstream reward code needs torchvision, which never enters .venv (see tests/test_rewards_parity.py).
PARITY := .venv-parity
PARITY_TORCH ?= torch==2.14.1 torchvision==0.29.1
PARITY_STAMP := $(PARITY)/.installed

export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install train test test-all parity gpu-check lint clean

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
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# hpsv2 and image-reward pin old pytest/protobuf/timm and do not import as shipped, hpsv3 pins transformers 4.45.2
# and needs trl/peft/deepspeed at import: installed without their dependencies; the tests run only their scoring
# code, with small shims. The stamp follows this file too, so a wheel added here reaches an existing .venv-parity.
$(PARITY_STAMP): pyproject.toml Makefile
	test -x $(PARITY)/bin/python || $(PYTHON) -m venv $(PARITY)
	$(PARITY)/bin/python -m pip install -q --upgrade pip
	$(PARITY)/bin/python -m pip install -q $(PARITY_TORCH) open-clip-torch timm transformers safetensors pytest pillow
	$(PARITY)/bin/python -m pip install -q --no-deps hpsv2==1.2.0 image-reward==1.5 hpsv3==1.0.0
	$(PARITY)/bin/python -m pip install -q --no-deps -e .
	touch $(PARITY_STAMP)

parity: $(PARITY_STAMP)
	RENEGX_REQUIRE_PARITY=1 $(PARITY)/bin/python -m pytest -q -m parity tests/test_rewards_parity.py

gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(PARITY) runs .pytest_cache
