"""The trainer: one loop shared by pretraining, SFT, DPO, the reward model and RL; DDP with torchrun, checkpoints, logs.

Public surface (imported from the modules):
- `python -m train pretrain|sft|dpo|rm|rl` (`make pretrain`, `sft`, `dpo`, `rm`, `rl`): each module's `main`;
- `train.loop.train(cfg, data, dist, build_model, hooks)`: the loop, with `Hooks` for what a trainer adds;
- `train.config`: `RunConfig`, `TrainConfig`, `parse_args`; each stage's config (`train.sft.SFTTrainConfig`, ...);
- `train.model`: `build_model`, `check_context`, `resolve_init`, `resolve_sft_init`, `frozen` (the model a stage
  starts from);
- `train.data`: `PretrainData`, `SFTData`, `PrefData`, `PromptData`, `BatchPlan` (the deterministic order of
  global batches);
- `train.hellaswag`: HellaSwag's acc and acc_norm of a model (`evaluate`), which `python -m train hellaswag`
  (`train.evaluate`, `make hellaswag`) and pretraining's `--hellaswag` report;
- `train.tasks`: the RL rewards (`load_reward`: the built-in arithmetic task, GSM8K, a reward model);
- `train.checkpoint`: `save_checkpoint`, `latest_checkpoint`, `load_training_state`, `best_evaluations`;
- `train.distributed`: `Dist`, `process_group`, `run_process` (a trainer process's end); `train.log`: `RunLog`,
  `read_log`.
"""
