# minigpt2: every target sets up .venv first (seconds when already done). `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Data
DATA_DIR ?= data
DATASET ?= sample
SFT_DATASET ?= $(if $(filter sample,$(DATASET)),sample,alpaca)
SOURCE ?=
WORKERS ?= $(shell nproc)
SHARD_TOKENS ?= 100000000
VAL_TOKENS ?=
TASK_INDEX ?= 0
NUM_TASKS ?= 1
# Training
NGPU ?= 1
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
RUN_DIR ?= runs/$(DATASET)
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup demo test shards pretrain-shards sft-shards inspect pretrain sft export-hf generate chat \
        bench bench-shards bench-train bench-generate clean

help: ## list targets and variables
	@echo "minigpt2 targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'
	@echo "variables (make VAR=value): DATA_DIR=$(DATA_DIR) DATASET=$(DATASET) SFT_DATASET=$(SFT_DATASET) SOURCE= WORKERS=$(WORKERS)"
	@echo "  SHARD_TOKENS=$(SHARD_TOKENS) VAL_TOKENS= TASK_INDEX=$(TASK_INDEX) NUM_TASKS=$(NUM_TASKS)"
	@echo "  NGPU=$(NGPU) NNODES=$(NNODES) NODE_RANK=$(NODE_RANK) MASTER_ADDR=$(MASTER_ADDR) RUN_DIR=$(RUN_DIR)"
	@echo "  trainer: MODEL STEPS BATCH_TOKENS MICRO_BATCH SEQ_LEN LR WARMUP EVAL_EVERY SAVE_EVERY RESUME INIT COMPILE SEED"
	@echo "  ARGS='...' passes extra flags to the underlying command"

$(STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	@touch $(STAMP)

setup: $(STAMP) ## create .venv and install the pinned packages (the only step that needs the network)

demo: $(STAMP) ## the whole job on the built-in sample, offline, on a CPU
	$(MAKE) --no-print-directory shards
	$(MAKE) --no-print-directory inspect

test: $(STAMP) ## run the test suite (offline)
	$(PY) -m pytest -q tests

shards: pretrain-shards sft-shards ## tokenize both the pretraining and the SFT data

pretrain-shards: $(STAMP) ## download (if needed) and tokenize the pretraining data into shards
	$(PY) -m pipelines pretrain --dataset $(DATASET) --data-dir $(DATA_DIR) --workers $(WORKERS) \
	  --shard-tokens $(SHARD_TOKENS) $(if $(VAL_TOKENS),--val-tokens $(VAL_TOKENS)) $(if $(SOURCE),--source $(SOURCE)) \
	  --task-index $(TASK_INDEX) --num-tasks $(NUM_TASKS) $(ARGS)

sft-shards: $(STAMP) ## download (if needed) and tokenize the SFT data into masked shards
	$(PY) -m pipelines sft --dataset $(SFT_DATASET) --data-dir $(DATA_DIR) $(if $(SOURCE),--source $(SOURCE)) $(ARGS)

inspect: $(STAMP) ## print and verify every manifest under DATA_DIR
	$(PY) -m shards inspect $(DATA_DIR) --verify --decode 2

bench: bench-shards ## run every benchmark

bench-shards: $(STAMP) ## tokenize-stage tokens/s against raw tiktoken, and peak RSS per worker
	$(PY) -m bench.shards $(ARGS)

clean: ## remove the sample data and runs (not .venv)
	rm -rf $(DATA_DIR)/sample* runs/
