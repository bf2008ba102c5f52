"""Idempotent data stages: download sources, tokenize them into shards, write manifests.

Public surface (imported from the modules, so that a worker process loads only what it needs):
- `pipelines.pretrain.run(PretrainConfig)`, `pipelines.sft.run(SFTConfig)` and `pipelines.prefs.run(PrefsConfig)`:
  the three stages, also `python -m pipelines pretrain|sft|prefs` (`make pretrain-shards`, `make sft-shards`,
  `make pref-shards`); `pipelines.hellaswag.run(HellaSwagConfig)`, the HellaSwag evaluation shards
  (`python -m pipelines hellaswag`, `make hellaswag-shards`; scored by train/hellaswag.py);
- `pipelines.hub.download`: verified, resumable downloads of pinned hub files (`hub.SOURCES`);
- `pipelines.sources`, `pipelines.sft_sources` and `pipelines.pref_sources`: what each dataset reads, and how
  (`TextSource`, `ExampleSource`, `PairSource`: each a `pipelines.stage.Source`; `SourceError`);
- `pipelines.examples`: masked examples (an Alpaca prompt, an answer, EOT), what the SFT and preference stages share;
- `pipelines.tokenize_stage`: documents to llm.c token shards, in parallel (the pretraining tokenize stage);
- `pipelines.stage`: fingerprinted output folders, `run_once`, `finish`, `parallel_map`, the `Source` protocol,
  and `find_shards_dir`, the one finished `DATA_DIR/<dataset>-<pretrain|sft|prefs>/<fingerprint>/` (the trainers' too).

The Alpaca prompt the SFT stage renders is the model's interface: `gpt.template`.

The dataset names each pipeline knows are here, for the trainers too (importing them loads nothing else).
"""

HUB_DATASETS = ("fineweb10B", "fineweb-edu10B")  # pinned in pipelines.hub.SOURCES
PRETRAIN_DATASETS = ("sample", *HUB_DATASETS)  # `--dataset` of `python -m pipelines pretrain`
SFT_DATASETS = ("sample", "alpaca", "gsm8k")  # `--dataset` of `python -m pipelines sft`
PREF_DATASETS = ("sample", "ultrafeedback")  # `--dataset` of `python -m pipelines prefs`
HELLASWAG = "hellaswag"  # `python -m pipelines hellaswag`: its shards are DATA_DIR/hellaswag-eval/ (kind "eval")
HELLASWAG_ENDINGS = 4  # rows per HellaSwag example in those shards: its context with each of its endings
CUSTOM = "custom"  # the dataset name of a stage given --source (SOURCE=): the user's own files
