"""The trainer: one loop shared by pretraining and SFT, DDP with torchrun, checkpoints and logs."""
