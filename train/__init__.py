"""The trainer: one loop shared by pretraining and SFT, DDP with torchrun, checkpoints and logs.

Public surface (imported from the modules):
- `python -m train pretrain|sft` (`make pretrain`, `make sft`): `train.pretrain.main`, `train.sft.main`;
- `train.loop.train(cfg, data, dist, build_model, hooks)`: the loop, with `Hooks` for what a trainer adds;
- `train.config`: `RunConfig`, `TrainConfig`, `parse_args`; `train.sft.SFTTrainConfig`;
- `train.model`: `build_model`, `check_context` (the model a stage starts from);
- `train.data`: `PretrainData`, `SFTData`, `BatchPlan` (the deterministic order of global batches);
- `train.checkpoint`: `save_checkpoint`, `latest_checkpoint`, `load_training_state`;
- `train.distributed`: `Dist`, `process_group`; `train.log`: `RunLog`, `read_log`.
"""
