"""The trainer: one loop shared by pretraining, SFT, DPO and the reward model, DDP with torchrun, checkpoints and logs.

Public surface (imported from the modules):
- `python -m train pretrain|sft|dpo|rm` (`make pretrain`, `make sft`, `make dpo`, `make rm`): each module's `main`;
- `train.loop.train(cfg, data, dist, build_model, hooks)`: the loop, with `Hooks` for what a trainer adds;
- `train.config`: `RunConfig`, `TrainConfig`, `parse_args`; `train.sft.SFTTrainConfig`;
- `train.model`: `build_model`, `check_context`, `resolve_sft_init` (the model a stage starts from);
- `train.data`: `PretrainData`, `SFTData`, `BatchPlan` (the deterministic order of global batches);
- `train.checkpoint`: `save_checkpoint`, `latest_checkpoint`, `load_training_state`;
- `train.distributed`: `Dist`, `process_group`; `train.log`: `RunLog`, `read_log`.
"""
