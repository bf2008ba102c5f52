"""Idempotent data stages: download sources, tokenize them into shards, write manifests.

Public surface (imported from the modules, so that a worker process loads only what it needs):
- `pipelines.pretrain.run(PretrainConfig)` and `pipelines.sft.run(SFTConfig)`: the two stages, also
  `python -m pipelines pretrain|sft` (`make pretrain-shards`, `make sft-shards`);
- `pipelines.hub.download`: verified, resumable downloads of pinned hub files (`hub.SOURCES`);
- `pipelines.sources` and `pipelines.sft_sources`: what each dataset reads, and how (`SourceError`);
- `pipelines.stage`: fingerprinted output folders, `run_once`, `finish`, `parallel_map`;
- `pipelines.alpaca`: the Stanford Alpaca prompt template (`render_prompt`, `encode_example`).
"""
