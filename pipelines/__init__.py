"""Idempotent data stages: download sources, tokenize them into shards, write manifests.

Public surface (imported from the modules, so that a worker process loads only what it needs):
- `pipelines.pretrain.run(PretrainConfig)` and `pipelines.sft.run(SFTConfig)`: the two stages, also
  `python -m pipelines pretrain|sft` (`make pretrain-shards`, `make sft-shards`);
- `pipelines.hub.download`: verified, resumable downloads of pinned hub files (`hub.SOURCES`);
- `pipelines.sources` and `pipelines.sft_sources`: what each dataset reads, and how (`TextSource`,
  `ExampleSource`: both a `pipelines.stage.Source`; `SourceError`);
- `pipelines.tokenize_stage`: documents to llm.c token shards, in parallel (the pretraining tokenize stage);
- `pipelines.stage`: fingerprinted output folders, `run_once`, `finish`, `parallel_map`, the `Source` protocol,
  and `find_shards_dir`, the one finished `DATA_DIR/<dataset>-<pretrain|sft>/<fingerprint>/` (the trainers' too).

The Alpaca prompt the SFT stage renders is the model's interface: `gpt.template`.

The dataset names each pipeline knows are here, for the trainers too (importing them loads nothing else).
"""

HUB_DATASETS = ("fineweb10B", "fineweb-edu10B")  # pinned in pipelines.hub.SOURCES
PRETRAIN_DATASETS = ("sample", *HUB_DATASETS)  # `--dataset` of `python -m pipelines pretrain`
SFT_DATASETS = ("sample", "alpaca")  # `--dataset` of `python -m pipelines sft`
CUSTOM = "custom"  # the dataset name of a stage given --source (SOURCE=): the user's own files
