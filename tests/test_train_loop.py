"""The training loop in one process: learning, schedule, checkpoints, refusals, non-finite loss."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from gpt.checkpoint import load_config, load_model
from train.checkpoint import latest_checkpoint, resolve_checkpoint
from train.config import TrainConfig, build_parser, parse_args
from train.log import RunLog, read_log
from train.loop import lr_at, mfu_peak, peak_bf16_flops
from train.pretrain import main
from train_shards import one_thread, small_model, write_test_shards  # noqa: F401 (an autouse fixture)

NANO = ["--model", "nano", "--seq-len", "32", "--batch-tokens", "256", "--micro-batch", "4", "--warmup", "2",
        "--eval-tokens", "256", "--no-progress"]


@pytest.fixture()
def shards(tmp_path):
    return write_test_shards(tmp_path / "shards")


@pytest.fixture()
def small(tmp_path):
    """Shards and an --init model with a 256-token vocabulary (the machinery tests do not need GPT-2's)."""
    return write_test_shards(tmp_path / "small-shards", eot=99), small_model(tmp_path / "small-model")


def run(shards, run_dir, *flags):
    return main(["--shards-dir", str(shards), "--run-dir", str(run_dir), *NANO, *flags])


def run_small(small, run_dir, *flags):
    shards, init = small
    return run(shards, run_dir, "--init", str(init), "--sample-tokens", "0", *flags)


def test_loss_falls_and_outputs_are_written(shards, tmp_path):
    assert run(shards, tmp_path / "run", "--steps", "24", "--lr", "1e-2", "--eval-every", "8", "--save-every", "8",
               "--sample-tokens", "4") == 0
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(25))
    for r in log[1:]:
        assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= r.keys() and math.isfinite(r["loss"])
    val = {r["step"]: r["val_loss"] for r in log if "val_loss" in r}
    assert sorted(val) == [0, 8, 16, 24]
    assert val[0] > 10.5  # ~ln(50257) at init
    assert val[24] < val[0] - 5  # the progressions are learnable: it learns a lot in 24 steps
    assert log[-1]["loss"] < log[1]["loss"] - 5
    assert log[0]["samples"][0].startswith("Hello")
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step-000024"
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").glob("step-*")) == ["step-000008", "step-000016",
                                                                              "step-000024"]
    state = json.loads((ckpt / "state.json").read_text())
    # 93 + 62 windows of 33 tokens, 8 per step: 19 steps per epoch
    assert state["step"] == 24 and state["data_position"]["epoch"] == 1 and state["data_position"]["batch"] == 5
    model = load_model(ckpt)  # the checkpoint is a model folder gpt.load_model reads
    x = torch.tensor([[50256] + [100 + (7 * i) % 97 for i in range(10)]])
    assert model(x)[0, -1].argmax().item() == 100 + (7 * 10) % 97  # it predicts the progression


def test_keep_last_k_checkpoints(small, tmp_path):
    assert run_small(small, tmp_path / "run", "--steps", "5", "--eval-every", "5", "--save-every", "1",
                     "--keep-checkpoints", "2") == 0
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").glob("*")) == ["latest", "step-000004", "step-000005"]


def test_a_run_folder_its_ckpt_and_its_latest_file_name_its_latest_checkpoint(small, tmp_path, monkeypatch):
    first = tmp_path / "first"
    assert run_small(small, first, "--steps", "2", "--eval-every", "2", "--save-every", "1") == 0
    latest = first / "ckpt" / "step-000002"
    for path in (first, first / "ckpt", first / "ckpt" / "latest", latest):
        assert resolve_checkpoint(path) == latest
        assert load_config(path) == load_model(latest).config
    weights = load_model(latest).state_dict()
    for path in (first, first / "ckpt", first / "ckpt" / "latest"):  # gpt.load_model takes what CKPT= takes
        assert all(torch.equal(t, weights[k]) for k, t in load_model(path).state_dict().items())
    assert resolve_checkpoint(small[1]) == small[1] and resolve_checkpoint(tmp_path / "no") == tmp_path / "no"
    elsewhere = shutil.copytree(small[1], first / "exports" / "latest")  # a folder named `latest` is itself
    assert resolve_checkpoint(elsewhere) == elsewhere
    monkeypatch.chdir(first / "ckpt")
    assert resolve_checkpoint("latest") == latest
    # INIT=run folder: the second run starts from the first one's weights (the same validation loss)
    assert run(small[0], tmp_path / "second", "--init", str(first), "--sample-tokens", "0", "--steps", "1") == 0
    assert read_log(tmp_path / "second")[0]["val_loss"] == read_log(first)[-1]["val_loss"]


def test_lr_schedule_warmup_and_cosine():
    cfg = TrainConfig(lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg, 110) == pytest.approx(0.1)
    assert lr_at(9, cfg, 110) == pytest.approx(1.0)
    assert lr_at(60, cfg, 110) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_at(110, cfg, 110) == pytest.approx(0.1)
    assert lr_at(500, cfg, 110) == pytest.approx(0.1)


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12),
    ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("NVIDIA L4", 121e12), ("Tesla T4", None)])
def test_mfu_peak_is_the_most_specific_gpu_name(name, peak):
    assert peak_bf16_flops(name) == peak


def test_mfu_only_for_bf16_runs_on_a_gpu(monkeypatch):
    """MFU is against the bf16 peak: a --dtype float32 run (TF32 products, half that peak) gets none, not a
    figure half of what it should be; nor does a CPU run."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    cuda = torch.device("cuda")
    assert mfu_peak(TrainConfig(dtype="bfloat16"), cuda) == 989e12
    assert mfu_peak(TrainConfig(dtype="float32"), cuda) is None
    assert mfu_peak(TrainConfig(dtype="bfloat16"), torch.device("cpu")) is None


def test_dataset_defaults_and_flags():
    sample = parse_args([])
    assert (sample.model, sample.dataset) == ("tiny", "sample")
    fineweb = parse_args(["--dataset", "fineweb10B", "--lr", "3e-4", "--compile"])
    assert (fineweb.model, fineweb.batch_tokens, fineweb.seq_len, fineweb.micro_batch) == ("gpt2", 524288, 1024, 32)
    assert (fineweb.warmup, fineweb.lr, fineweb.min_lr_ratio, fineweb.weight_decay) == (715, 3e-4, 0.1, 0.1)
    assert (fineweb.beta1, fineweb.beta2, fineweb.eps, fineweb.grad_clip, fineweb.compile) == (0.9, 0.95, 1e-8, 1.0, True)
    assert (fineweb.steps, fineweb.epochs) == (None, 1)  # one epoch
    assert (sample.steps, sample.epochs) == (720, 1)
    by_epochs = parse_args(["--epochs", "3"])  # --epochs replaces the sample's fixed steps; --steps overrides both
    assert (by_epochs.steps, by_epochs.epochs, parse_args(["--epochs", "3", "--steps", "5"]).steps) == (None, 3, 5)
    assert (sample.run_dir, fineweb.run_dir) == ("runs/sample/pretrain", "runs/fineweb10B/pretrain")
    assert (sample.recipe, fineweb.recipe) == ("sample", "gpt2-124m")  # the recipe follows --dataset
    custom = parse_args(["--recipe", "sample", "--dataset", "custom"])  # or is named
    assert (custom.recipe, custom.model, custom.dataset, custom.run_dir) == ("sample", "tiny", "custom",
                                                                             "runs/custom/pretrain")
    help_text = " ".join(build_parser().format_help().split())
    assert "--lr LR recipes: sample 0.006, gpt2-124m 0.0006" in help_text
    assert "--steps STEPS recipes: sample 720, gpt2-124m --epochs epochs" in help_text
    assert "--seed SEED default: 1337" in help_text and "(default: None)" not in help_text


def test_dist_timeout_help_names_its_unit():
    """--help showed only "--dist-timeout DIST_TIMEOUT default: 30": minutes, where torchrun's timeouts are in
    seconds (--dist-timeout 1800 meant for 30 minutes is 30 hours)."""
    help_text = " ".join(build_parser().format_help().split())
    assert ("--dist-timeout DIST_TIMEOUT minutes a rank waits in a collective for the others before the job stops "
            "(NCCL's default: 10); default: 30") in help_text


def test_show_config_prints_the_resolved_recipe(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--recipe", "gpt2-124m", "--lr", "3e-4", "--show-config"])
    assert e.value.code == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == dataclasses.asdict(parse_args(["--recipe", "gpt2-124m", "--lr", "3e-4"]))
    assert (shown["recipe"], shown["model"], shown["lr"], shown["warmup"]) == ("gpt2-124m", "gpt2", 3e-4, 715)


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "--steps must be positive, got 0"),
    (["--eval-every", "0"], "--eval-every must be positive, got 0"),
    (["--save-every", "-1"], "--save-every must be positive, got -1"),
    (["--warmup", "-5"], "--warmup must be 0 or more, got -5"),
    (["--lr", "-1"], "--lr must be positive, got -1.0"),
    (["--beta2", "1"], "--beta2 must be within [0, 1), got 1.0"),
    (["--batch-tokens", "0"], "--batch-tokens must be positive, got 0"),
    (["--seed", "-1"], "--seed must be within [0, 2**64), got -1"),  # numpy's and torch's seeds
    (["--seed", str(2 ** 64)], "--seed must be within [0, 2**64), got 18446744073709551616"),
    (["--lr", "inf"], "--lr must be a finite number, got inf"),  # else step 1's update made every weight nan
    (["--weight-decay", "inf"], "--weight-decay must be a finite number, got inf"),
    (["--padded-vocab", "100"], "--padded-vocab must be at least the vocabulary's 50257, got 100"),
    (["--dist-timeout", "inf"], "--dist-timeout must be at most 100000000 (minutes), got inf"),  # torchrun's limit
    (["--dist-timeout", "1e30"], "--dist-timeout must be at most 100000000 (minutes), got 1e+30"),
    (["--device", "gpu"], "argument --device: invalid choice: 'gpu'"),
    (["--compile-mode", "max-autotune-no-cudagraphs"], "--compile-mode max-autotune-no-cudagraphs needs --compile"),
    (["--hellaswag-examples", "100"], "--hellaswag-examples needs --hellaswag"),  # else ignored without a word
    (["--hellaswag-dir", "x"], "--hellaswag-dir needs --hellaswag"),
    (["--compile", "--compile-mode", "reduce-overhead"],
     "argument --compile-mode: invalid choice: 'reduce-overhead' (choose from 'default', 'tuned', "
     "'max-autotune-no-cudagraphs')"),
    (["--model", "gpt3"], "argument --model: invalid choice: 'gpt3' (choose from 'gpt2', 'gpt2-medium'"),
    (["--dataset", "nope"], "argument --dataset: invalid choice: 'nope' (choose from 'sample', 'fineweb10B', "
                            "'fineweb-edu10B', 'custom')"),
])
def test_values_out_of_range_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_model_other_than_inits_is_a_usage_error(small, capsys):
    """--init's checkpoint is the model trained: a --model of another shape beside it was silently ignored."""
    init = small[1]
    assert parse_args(["--init", str(init), "--model", "nano"]).model == "nano"  # its shape: accepted
    assert parse_args(["--init", str(init)]).init == str(init)  # the recipe's model (tiny) is no choice of the user's
    with pytest.raises(SystemExit) as e:
        parse_args(["--init", str(init), "--model", "tiny"])
    assert e.value.code == 2 and (f"--model tiny is not the model of --init {init} (2 layers, 2 heads, width 32, "
                                  "context 64): the run trains --init's model; drop --model (MODEL=)"
                                  in capsys.readouterr().err)


@pytest.mark.parametrize("stage, flag", [("dpo", "--beta"), ("rm", "--margin"), ("rl", "--kl-beta")])
def test_an_infinite_number_is_a_usage_error_in_every_stage(stage, flag, capsys):
    """Each stage's own float flags too: `--beta inf` would only end at step 1, in a nan loss."""
    from train.dpo import DPOTrainConfig
    from train.rl import RLTrainConfig
    from train.rm import RMTrainConfig
    config_cls = {"dpo": DPOTrainConfig, "rm": RMTrainConfig, "rl": RLTrainConfig}[stage]
    with pytest.raises(SystemExit) as e:
        parse_args([flag, "inf"], config_cls)
    assert e.value.code == 2 and f"{flag} must be a finite number, got inf" in capsys.readouterr().err


def test_ctrl_c_outside_the_training_steps_is_one_line_not_a_traceback(monkeypatch, capsys):
    """Ctrl-C while a trainer starts (imports, shard verification) or reports: exit 130 with one line, as in the
    steps (whose own handler saves a checkpoint first) and in the data pipelines."""
    import train.__main__ as command
    import train.pretrain

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.pretrain, "main", interrupted)
    assert command.main(["pretrain", "--steps", "1"]) == 130
    assert capsys.readouterr().err == "\npretrain: interrupted before or after the training steps: no step is lost\n"


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "rm", "rl"])
def test_the_full_recipes_run_on_1_2_4_or_8_gpus(stage):
    """`make <stage> NGPU=8` (and 1, 2, 4) with a recipe's own batch: its global batch divides into micro-batches
    on every rank (alpaca's 64 examples in micro-batches of 16 did not on 8 GPUs)."""
    import importlib

    from train.config import TrainConfig
    from train.data import accumulation_steps

    module = importlib.import_module(f"train.{stage}")
    config = TrainConfig if stage == "pretrain" else next(
        v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__ and
        getattr(v, "STAGE", None) == stage)
    rows = dict(pretrain=lambda c: c.batch_tokens // c.seq_len, sft=lambda c: c.batch_examples,
                dpo=lambda c: c.batch_pairs, rm=lambda c: c.batch_pairs, rl=lambda c: c.batch_prompts)[stage]
    recipes = [c for name, c in config.RECIPES.items() if name != "sample"]
    assert recipes
    for cfg in recipes:
        for gpus in (1, 2, 4, 8):
            assert accumulation_steps(rows(cfg), cfg.micro_batch, gpus) >= 1, (cfg.recipe, gpus)


def test_sft_datasets_are_those_the_pipeline_makes(capsys):
    from train.sft import SFTTrainConfig

    with pytest.raises(SystemExit):
        parse_args(["--dataset", "nope"], SFTTrainConfig, prog="python -m train sft")
    assert "invalid choice: 'nope' (choose from 'sample', 'alpaca', 'gsm8k', 'custom')" in capsys.readouterr().err


def test_progress_bar_shows_the_loss_of_the_step_it_counts(tmp_path, capsys):
    log = RunLog(tmp_path, enabled=True, start_step=0, total_steps=3, progress=True, terminal=True)
    log.bar.mininterval = log.bar.miniters = 0  # redraw at every update
    for step, loss in enumerate([5.0, 4.0, 3.0], 1):
        log.write({"step": step, "loss": loss, **({"val_loss": 6.0} if step == 1 else {})})
        frame = capsys.readouterr().err.split("\r")[-1]
        assert f"{step}/3" in frame and f"loss={loss:.4f}" in frame and "val_loss=6.0000" in frame, frame
    log.close()


def test_progress_outside_a_terminal_is_plain_lines(tmp_path, capsys, monkeypatch):
    """Where stderr is a file (nohup, a cluster's log), no bar redrawn with carriage returns: a line at the first
    step, then one per PLAIN_EVERY_S seconds and at the last step, with the time left at the rate since the first
    step and the last losses (loss first, whichever came first)."""
    from shards import progress

    clock = iter([90.0, 100.0, 130.0, 161.0, 170.0, 175.0])  # the log's start, then steps 11 to 15
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(11)))
    log = RunLog(tmp_path, enabled=True, start_step=10, total_steps=15, progress=True, desc="pretrain")
    log.amend(10, {"val_loss": 4.5})  # the evaluation before the first step
    for step in range(11, 16):
        log.write({"step": step, "loss": 5.0 - step / 10, **({"val_loss": 4.0} if step == 12 else {})})
    log.close()
    assert capsys.readouterr().err.splitlines() == [
        "pretrain: 11/15 steps (73.3%), 00:10 elapsed, loss 3.9000, val_loss 4.5000",
        "pretrain: 13/15 steps (86.7%), 01:11 elapsed, 01:01 left, loss 3.7000, val_loss 4.0000",
        "pretrain: 15/15 steps (100.0%), 01:25 elapsed, 00:00 left, loss 3.5000, val_loss 4.0000"]
    quiet = RunLog(tmp_path, enabled=True, start_step=0, total_steps=2, progress=False)
    quiet.write({"step": 1, "loss": 1.0})
    quiet.close()
    assert capsys.readouterr().err == ""


def test_plain_progress_of_a_resumed_run_times_from_its_first_step_not_its_late_evaluation(tmp_path, capsys,
                                                                                            monkeypatch):
    """A run resumed at an evaluation step that a stop signal skipped evaluates it first (`amend`); the time left is
    still measured from the first step this process trains, not from that evaluation (which would count the first
    step's compilation: 12 hours left where 17 minutes are)."""
    from shards import progress

    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(11)))
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 1.0)
    log = RunLog(tmp_path, enabled=True, start_step=10, total_steps=1010, progress=True, desc="pretrain")
    log.amend(10, {"val_loss": 4.0})  # at 100 s
    for step, now[0] in ((11, 190.0), (12, 191.0)):  # the first step compiled (90 s), then 1 s a step
        log.write({"step": step, "loss": 3.0})
    log.close()
    assert capsys.readouterr().err.splitlines() == [
        "pretrain: 11/1,010 steps (1.1%), 01:30 elapsed, loss 3.0000, val_loss 4.0000",
        "pretrain: 12/1,010 steps (1.2%), 01:31 elapsed, 16:38 left, loss 3.0000, val_loss 4.0000"]


def test_the_loss_plot_s_labels_fit_in_the_image(tmp_path, monkeypatch):
    """loss.png shows every label whole: its y label was taller than the figure, cut off at the top."""
    import matplotlib.pyplot as plt

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    log = RunLog(tmp_path, enabled=True, start_step=0, total_steps=2, progress=False, plot_metrics=("eot_rate",))
    for record in ({"step": 0, "val_loss": 5.0, "eot_rate": 0.1}, {"step": 1, "loss": 4.0},
                   {"step": 2, "loss": 3.0, "val_loss": 3.5, "eot_rate": 0.5}):
        log.write(record)
    log.plot()
    log.close()
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    texts = [label for ax in fig.axes for label in (ax.xaxis.label, ax.yaxis.label) if label.get_text()]
    assert len(texts) == 3  # step, the loss, eot_rate
    for text in texts:
        box = text.get_window_extent(renderer)
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, \
            (text.get_text(), box, fig.bbox)
    close(fig)


def test_a_late_evaluation_joins_its_step_s_record_or_makes_one(tmp_path):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(4)))
    log = RunLog(tmp_path, enabled=True, start_step=2, total_steps=4, progress=False)
    assert log.amend(2, {"val_loss": 0.5}) == {"step": 2, "loss": 1.0, "val_loss": 0.5}
    log.write({"step": 3, "loss": 0.9})
    log.close()
    assert read_log(tmp_path) == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 1.0},
                                  {"step": 2, "loss": 1.0, "val_loss": 0.5}, {"step": 3, "loss": 0.9}]
    (tmp_path / "log.jsonl").unlink()  # a lost log: the evaluation is the step's record
    log = RunLog(tmp_path, enabled=True, start_step=2, total_steps=4, progress=False)
    assert log.amend(2, {"val_loss": 0.5}) == {"step": 2, "val_loss": 0.5}
    log.close()
    assert read_log(tmp_path) == [{"step": 2, "val_loss": 0.5}]


def test_a_killed_run_s_half_written_files_are_removed_at_the_next_start(small, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    leftovers = [run_dir / ".log.jsonl.tmp-4242", run_dir / ".loss.png.tmp-4242"]  # atomic_write's, killed
    for path in [*leftovers, run_dir / "notes.txt"]:
        path.write_text("x")
    assert run_small(small, run_dir, "--steps", "1") == 0
    assert not any(p.exists() for p in leftovers) and (run_dir / "notes.txt").read_text() == "x"


def test_accumulation_error_is_clear(small, tmp_path, capsys):
    assert run_small(small, tmp_path / "run", "--steps", "2", "--micro-batch", "3") == 1
    assert "global batch of 8 sequences of 32 tokens is not a multiple of micro-batch 3 x 1 rank(s)" in \
        capsys.readouterr().err
    assert not (tmp_path / "run" / "ckpt").exists()


def test_changed_manifest_and_existing_run_are_refused(small, tmp_path, capsys):
    assert run_small(small, tmp_path / "run", "--steps", "4", "--save-every", "2") == 0
    assert run_small(small, tmp_path / "run", "--steps", "4") == 1
    assert "already holds checkpoints (latest step-000004); pass --resume" in capsys.readouterr().err
    assert run_small(small, tmp_path / "run", "--steps", "4", "--resume", "--lr", "1e-3") == 1
    assert "the run's config changed (lr: 0.006 -> 0.001)" in capsys.readouterr().err
    # another validation set: its val_loss is not comparable with the run's earlier ones
    assert run_small(small, tmp_path / "run", "--steps", "4", "--resume", "--eval-tokens", "512") == 1
    assert "the run's config changed (eval_tokens: 256 -> 512)" in capsys.readouterr().err
    # the same shards, other rows kept (a reader's rule changed between versions): other batches
    state_file = latest_checkpoint(tmp_path / "run") / "state.json"
    state = json.loads(state_file.read_text())
    rows = state["data_position"]["num_rows"]
    state_file.write_text(json.dumps({**state, "data_position": {**state["data_position"], "num_rows": rows + 3}}))
    assert run_small(small, tmp_path / "run", "--steps", "4", "--resume") == 1
    assert f"the run's config changed (train rows: {rows + 3} -> {rows})" in capsys.readouterr().err
    state_file.write_text(json.dumps(state))
    manifest = json.loads((small[0] / "manifest.json").read_text())
    manifest["note"] = "re-tokenized"
    (small[0] / "manifest.json").write_text(json.dumps(manifest))
    assert run_small(small, tmp_path / "run", "--steps", "4", "--resume") == 1
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "step-000004" in err and "the data changed" in err


def test_a_run_is_extended_only_with_extend_and_the_added_steps_run_at_the_final_lr(small, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run_small(small, run_dir, "--steps", "3", "--save-every", "3") == 0
    assert run_small(small, run_dir, "--steps", "5", "--resume") == 1
    assert "the run's config changed (total steps: 3 -> 5); more steps need --extend (EXTEND=1)" in \
        capsys.readouterr().err
    assert run_small(small, run_dir, "--steps", "2", "--resume", "--extend") == 1  # shorter: never
    assert "the run's config changed (total steps: 3 -> 2)" in capsys.readouterr().err
    assert run_small(small, run_dir, "--steps", "5", "--resume", "--extend", "--lr", "1e-3") == 1
    assert "the run's config changed (lr: 0.006 -> 0.001)" in capsys.readouterr().err
    assert run_small(small, run_dir, "--steps", "5", "--resume", "--extend") == 0
    assert "extended from 3 to 5 steps: the learning rate schedule still ends at step 3, the steps after it run " \
           "at 0.0006" in capsys.readouterr().out
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4, 5]
    assert log[3]["lr"] == pytest.approx(6e-3) and log[4]["lr"] == log[5]["lr"] == pytest.approx(6e-4)
    state = json.loads((latest_checkpoint(run_dir) / "state.json").read_text())
    assert (state["step"], state["total_steps"], state["schedule_steps"]) == (5, 5, 3)
    assert state["extensions"] == [{"step": 3, "from": 3, "to": 5}]
    assert run_small(small, run_dir, "--steps", "6", "--resume", "--extend") == 0
    state = json.loads((latest_checkpoint(run_dir) / "state.json").read_text())
    assert state["schedule_steps"] == 3 and state["extensions"][1:] == [{"step": 5, "from": 5, "to": 6}]
    assert run_small(small, run_dir, "--steps", "6", "--resume") == 0  # the extended run resumes as it is
    assert "already finished (6 steps); nothing to do (more --steps with --extend train it further)" in \
        capsys.readouterr().out


def test_the_models_context_is_checked_before_the_data(small, tmp_path, capsys):
    assert run_small(small, tmp_path / "run", "--seq-len", "99999") == 1
    assert "pretrain: error: --seq-len 99999 exceeds the model's context of 64\n" in capsys.readouterr().err
    assert run(small[0], tmp_path / "run", "--seq-len", "99999") == 1  # the preset's context (nano)
    assert "pretrain: error: --seq-len 99999 exceeds the model's context of 64\n" in capsys.readouterr().err


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(small, tmp_path, capsys):
    # An absurd learning rate sends the weights to inf after the first update: step 2's loss is NaN.
    assert run_small(small, tmp_path / "run", "--steps", "6", "--lr", "1e30", "--warmup", "1", "--save-every", "1") == 1
    err = capsys.readouterr().err
    assert "step 2: loss nan" in err and "the last good checkpoint is kept" in err
    assert latest_checkpoint(tmp_path / "run").name == "step-000001"
    assert not (tmp_path / "run" / "ckpt" / "step-000002").exists()
    assert [r["step"] for r in read_log(tmp_path / "run")] == [0, 1]


def test_a_fresh_start_after_a_failed_attempt_begins_a_new_log(small, tmp_path):
    """The failed attempt left step 0 and 1 in log.jsonl but no checkpoint: the next run starts at step 0 anew."""
    run_dir = tmp_path / "run"
    assert run_small(small, run_dir, "--steps", "6", "--lr", "1e30", "--warmup", "1", "--save-every", "100") == 1
    assert [r["step"] for r in read_log(run_dir)] == [0, 1] and latest_checkpoint(run_dir) is None
    assert run_small(small, run_dir, "--steps", "2", "--eval-every", "2") == 0
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [0, 1, 2] and math.isfinite(log[1]["loss"])


def test_a_full_disk_while_saving_is_a_message_and_keeps_the_last_checkpoint(small, tmp_path, capsys, monkeypatch):
    import errno

    import train.checkpoint as checkpoint

    real, saves = checkpoint.save_model, []

    def fills_the_disk(model, directory, *args):
        saves.append(directory)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, f"disk full while writing {directory}/model.safetensors")
        return real(model, directory, *args)

    monkeypatch.setattr(checkpoint, "save_model", fills_the_disk)
    assert run_small(small, tmp_path / "run", "--steps", "4", "--save-every", "2") == 1
    assert "pretrain: error: [Errno 28] disk full while writing" in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "run").name == "step-000002"


def test_compile_gives_the_losses_of_eager_mode(small, tmp_path, monkeypatch):
    """--compile (torch.compile with inductor; the GPU recipe's path) compiles the model, its loss included
    (F.cross_entropy under tracing, not the fused loss), to the same per-step losses as eager mode; the optimizer
    step stays eager. --compile-mode tuned gives inductor coordinate descent tuning."""
    options, compile = [], torch.compile

    def recording(model, **kwargs):
        options.append(kwargs.get("options"))
        return compile(model, **kwargs)

    monkeypatch.setattr(torch, "compile", recording)
    flags = ("--steps", "3", "--eval-every", "3", "--save-every", "3")
    assert run_small(small, tmp_path / "eager", *flags) == 0
    assert run_small(small, tmp_path / "compiled", *flags, "--compile", "--compile-mode", "tuned") == 0
    eager, compiled = ([r["loss"] for r in read_log(tmp_path / run)[1:]] for run in ("eager", "compiled"))
    assert compiled == pytest.approx(eager, abs=1e-5) and len(eager) == 3
    assert options == [{"coordinate_descent_tuning": True}]


def test_save_checkpoint_clears_killed_saves_and_leaves_other_folders(tmp_path):
    from gpt.model import GPT, preset
    from train.checkpoint import save_checkpoint

    model = GPT(preset("nano"))
    optimizer = torch.optim.AdamW(model.parameters())
    root = tmp_path / "run" / "ckpt"
    (root / "step-000002-hf").mkdir(parents=True)  # an export next to the checkpoints: not one of them
    for stale in (".step-000003.tmp", ".step-000004.tmp-77"):  # killed saves, old and new naming
        (root / stale).mkdir()
    (root / ".latest.tmp-5").write_text("step-0")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / "run", step, model, optimizer, {}, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002-hf", "step-000003"]
    assert latest_checkpoint(tmp_path / "run").name == "step-000003"


def test_pruning_goes_by_step_past_a_million_steps(tmp_path):
    """step-1000000 sorts before step-999000 by name; the oldest by step is the one pruned."""
    from gpt.model import GPT, preset
    from train.checkpoint import save_checkpoint

    model = GPT(preset("nano"))
    root = tmp_path / "run" / "ckpt"
    for step in (999000, 1000000):
        (root / f"step-{step:06d}").mkdir(parents=True)
    save_checkpoint(tmp_path / "run", 1000001, model, torch.optim.AdamW(model.parameters()), {}, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-1000000", "step-1000001"]


def test_a_stage_brings_its_own_loss_and_units(small, tmp_path):
    """The loop's loss and what it is averaged over come from the stage (`Hooks.loss`, `Hooks.count`): here each
    row's mean token loss, averaged over rows, as a sequence-level stage would; step 1's logged loss is that
    of the initial model on the step's batch, and validation averages the same way."""
    import torch.nn.functional as F

    from train.data import PretrainData
    from train.distributed import Dist
    from train.loop import Hooks, train

    shards, init = small
    cfg = parse_args(["--shards-dir", str(shards), "--run-dir", str(tmp_path / "run"), *NANO, "--init", str(init),
                      "--sample-tokens", "0", "--steps", "1", "--lr", "1e-9"])
    data = PretrainData(shards, cfg.seq_len, cfg.batch_tokens, cfg.seed, cfg.eval_tokens)

    def row_losses(model, batch):
        logits = model(batch[0])
        return F.cross_entropy(logits.transpose(1, 2), batch[1], reduction="none").mean(dim=1)

    hooks = Hooks(loss=lambda model, batch: row_losses(model, batch).sum(), count=lambda batch: len(batch[0]))
    assert train(cfg, data, Dist(), lambda: load_model(init).train(), hooks)["step"] == 1
    model = load_model(init)
    with torch.no_grad():
        batches = data.train_batches(0, 0, 1, cfg.micro_batch)
        expected = torch.cat([row_losses(model, b) for b in batches]).mean().item()
        val = torch.cat([row_losses(model, b) for b in data.val_batches(0, 1, cfg.micro_batch)]).mean().item()
    log = read_log(tmp_path / "run")
    assert log[1]["loss"] == pytest.approx(expected, rel=1e-5)
    assert log[0]["val_loss"] == pytest.approx(val, rel=1e-5)


def test_a_resumed_run_keeps_recording_where_it_started_and_refuses_another_init(small, tmp_path, capsys):
    """state.json's config names the --init of the run's start after a resume too (RESUME=1 without INIT= used to
    record null), and a resume given another --init is refused: its checkpoint's weights, not that init's, go on."""
    shards, init = small
    run_dir = tmp_path / "run"
    assert run_small(small, run_dir, "--steps", "4", "--save-every", "2", "--eval-every", "2",
                     "--keep-checkpoints", "0") == 0
    shutil.rmtree(run_dir / "ckpt" / "step-000004")
    (run_dir / "ckpt" / "latest").write_text("step-000002\n")
    assert run(shards, run_dir, "--sample-tokens", "0", "--steps", "4", "--eval-every", "2", "--resume") == 0
    state = json.loads((latest_checkpoint(run_dir) / "state.json").read_text())
    assert state["step"] == 4 and state["config"]["init"] == str(init)
    other = tmp_path / "other-model"
    shutil.copytree(init, other)
    assert run(shards, run_dir, "--sample-tokens", "0", "--steps", "4", "--resume", "--init", str(other)) == 1
    assert f"the run started from {init}, not {other}" in capsys.readouterr().err


def test_a_resume_without_its_log_warns_that_the_log_and_plot_lack_the_earlier_steps(small, tmp_path, capsys):
    """A resumed run whose log.jsonl was deleted went on silently, its loss plot starting at the checkpoint: it now
    warns, naming the file; a resume with its log says nothing of it."""
    run_dir = tmp_path / "run"
    flags = ("--steps", "4", "--save-every", "2", "--eval-every", "2", "--keep-checkpoints", "0")
    assert run_small(small, run_dir, *flags) == 0

    def rewind():
        shutil.rmtree(run_dir / "ckpt" / "step-000004", ignore_errors=True)
        (run_dir / "ckpt" / "latest").write_text("step-000002\n")

    rewind()
    capsys.readouterr()
    assert run_small(small, run_dir, *flags, "--resume") == 0
    assert "warning" not in capsys.readouterr().err
    rewind()
    (run_dir / "log.jsonl").unlink()
    assert run_small(small, run_dir, *flags, "--resume") == 0
    assert (f"warning: {run_dir / 'log.jsonl'} is missing; this run resumes at step 2, so its log and loss.png lack "
            f"steps 0 to 2") in capsys.readouterr().err
    assert [r["step"] for r in read_log(run_dir)] == [2, 3, 4]  # the missed evaluation at step 2, then the steps
    rewind()
    (run_dir / "log.jsonl").write_text("")
    assert run_small(small, run_dir, *flags, "--resume") == 0
    assert "log.jsonl holds no step record; this run resumes at step 2" in capsys.readouterr().err


def test_an_extension_of_a_run_that_ended_in_its_warmup_runs_at_the_final_lr(small, tmp_path, capsys):
    """A run shorter than its warmup, extended: the added steps run at lr * min_lr_ratio, as the run says, not up
    the rest of the warmup to the peak lr and back down."""
    cfg = TrainConfig(lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert [lr_at(step, cfg, 4) for step in (4, 9, 10, 11)] == [pytest.approx(0.1)] * 4
    run_dir = tmp_path / "run"
    assert run_small(small, run_dir, "--steps", "2", "--warmup", "5") == 0
    assert run_small(small, run_dir, "--steps", "5", "--warmup", "5", "--resume", "--extend") == 0
    assert "the steps after it run at 0.0006" in capsys.readouterr().out
    assert [r["lr"] for r in read_log(run_dir) if r["step"] > 2] == [pytest.approx(6e-4)] * 3


def test_a_warmup_longer_than_the_run_and_steps_beyond_an_epoch_are_noticed_at_the_start(small, tmp_path, capsys):
    """--steps below --warmup (the learning rate never reached its peak) and --steps beyond one epoch (the rows
    came again) started without a word: each is one notice at the start, and a run with neither has none."""
    assert run_small(small, tmp_path / "plain", "--steps", "3", "--eval-every", "3") == 0
    assert "notice" not in capsys.readouterr().out
    assert run_small(small, tmp_path / "short", "--steps", "2", "--warmup", "5", "--eval-every", "2") == 0
    out = capsys.readouterr().out
    assert ("notice: the learning rate rises to 0.0024 and never reaches --lr 0.006: --warmup 5 is longer than the "
            "run's 2 steps (lower --warmup, or more --steps)") in out and out.count("notice") == 1
    assert run_small(small, tmp_path / "short", "--steps", "3", "--warmup", "5", "--eval-every", "2", "--resume",
                     "--extend") == 0
    assert ("notice: the learning rate rises to 0.0024 and never reaches --lr 0.006: --warmup 5 is longer than the 2 "
            "steps of its learning rate schedule (the run's first total)") in capsys.readouterr().out
    assert run_small(small, tmp_path / "long", "--steps", "24", "--eval-every", "24", "--save-every", "12") == 0
    out = capsys.readouterr().out  # 93 + 62 windows of 33 tokens, 8 per step: 19 steps per epoch
    assert ("notice: 24 steps (--steps) are 1.26 epochs of the train split (19 steps each): after the first epoch "
            "its rows come again, in a new order each epoch (--epochs N trains whole epochs)") in out
    assert out.count("notice") == 1
    assert run_small(small, tmp_path / "epochs", "--epochs", "2", "--eval-every", "38", "--save-every", "38") == 0
    assert "notice" not in capsys.readouterr().out  # whole epochs, as asked


def test_a_recipes_own_steps_beyond_an_epoch_are_not_noticed():
    """The sample recipes run several epochs of the small sample on purpose (the demo printed the notice for its
    DPO and reward-model runs); the same --steps given over a recipe that has other steps are noticed."""
    from types import SimpleNamespace

    from train.loop import _notices
    sample = TrainConfig.RECIPES["sample"]
    data = SimpleNamespace(plan=SimpleNamespace(steps_per_epoch=sample.steps // 3))
    assert _notices(sample, data, sample.steps, sample.steps) == []
    other = dataclasses.replace(sample, steps=sample.steps + 1)
    notices = _notices(other, data, other.steps, other.steps)
    assert len(notices) == 1 and notices[0].startswith(f"notice: {other.steps} steps (--steps) are 3.00 epochs")


def test_fetch_pins_contiguous_batches_for_the_gpu(shards, monkeypatch):
    """On a GPU `_fetch` copies each micro-batch from pinned memory without waiting. Pretraining's inputs and targets
    are strided views of one [B, T + 1] window buffer: pinned as they were, the copy to the GPU made them contiguous
    again in pageable memory first (torch copies a strided host tensor through a contiguous temporary), so the
    pinned copy was wasted and the transfer was from pageable memory. What is pinned must be contiguous."""
    from train import loop
    from train.config import TrainConfig
    from train.data import PretrainData
    from train.distributed import Dist

    pinned, copied = [], []

    def pin_memory(self):  # the CPU build cannot pin: record what would be pinned
        pinned.append(self.is_contiguous())
        return self.clone(memory_format=torch.preserve_format)

    def to(self, device, non_blocking=False):
        copied.append((torch.device(device).type, non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    data = PretrainData(shards, seq_len=32, batch_tokens=256, seed=0, eval_tokens=256)
    cfg = TrainConfig(micro_batch=4, seq_len=32, batch_tokens=256)
    batches, count = loop._fetch(data, 0, Dist(device=torch.device("cuda", 0)), cfg, loop.Hooks())
    assert count == 256 and len(batches) == 2
    assert pinned == [True] * 4 and copied == [("cuda", True)] * 4
    for inputs, targets in batches:
        assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_ddp_gradients_stay_in_the_all_reduce_buckets(small, tmp_path):
    """Under DDP the loop keeps gradients as views of DDP's all-reduce buckets (gradient_as_bucket_view). Zeroing them
    with set_to_none=True dropped those views at every step: each backward then made a gradient tensor per parameter
    beside the buckets (twice the gradients' memory on every GPU) and DDP copied them in, one copy per parameter.
    Here DDP runs on a one-process gloo group: after step 1, the first micro-batch's gradients (accumulated under
    no_sync) must lie in the buckets (one storage here), not in one tensor per parameter."""
    import torch.distributed as torch_dist

    from train.data import PretrainData
    from train.distributed import Dist
    from train.loop import Hooks, token_loss, train

    class OneRankDDP(Dist):  # wrapped in DDP as on several ranks, all-reducing over a one-process group
        enabled = property(lambda self: True)

    shards, init = small
    cfg = parse_args(["--shards-dir", str(shards), "--run-dir", str(tmp_path / "run"), *NANO, "--init", str(init),
                      "--sample-tokens", "0", "--steps", "3", "--micro-batch", "2", "--eval-every", "3"])
    data = PretrainData(shards, cfg.seq_len, cfg.batch_tokens, cfg.seed, cfg.eval_tokens)
    model = load_model(init).train()
    storages = []

    def loss(m, batch):
        if m is not model:  # a training micro-batch (evaluations get the model itself)
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            storages.append(len({g.untyped_storage().data_ptr() for g in grads}) if grads else None)
        return token_loss(m, batch)

    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert train(cfg, data, OneRankDDP(), lambda: model, Hooks(loss=loss))["step"] == 3
    finally:
        torch_dist.destroy_process_group()
    assert len(storages) == 12 and storages[0] is None, storages  # 3 steps of 4 micro-batches
    # step 1 (under no_sync before its last micro-batch) makes a gradient per parameter, which DDP then copies into
    # its buckets; from step 2 on every micro-batch accumulates into the buckets
    assert storages[4:8] == storages[8:12] == [1, 1, 1, 1], storages


def test_a_full_disk_while_appending_to_the_log_names_it_and_the_run_resumes(small, tmp_path, capsys, monkeypatch):
    """A full disk at a step's log.jsonl line said only `[Errno 28] No space left on device` (twice: the buffered
    line failed again when the log closed); it names the log now, and the run resumes from its last checkpoint."""
    import builtins
    import errno

    import train.log

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if b'"step": 3' in bytes(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def close(self):
            self.f.close()

    monkeypatch.setattr(train.log, "open", lambda *a, **k: Full(builtins.open(*a, **k)), raising=False)
    run_dir = tmp_path / "run"
    assert run_small(small, run_dir, "--steps", "4", "--save-every", "2") == 1
    assert f"pretrain: error: [Errno 28] No space left on device while appending to {run_dir / 'log.jsonl'}" in \
        capsys.readouterr().err
    monkeypatch.undo()
    assert latest_checkpoint(run_dir).name == "step-000002"
    assert run_small(small, run_dir, "--steps", "4", "--save-every", "2", "--resume") == 0
    assert [r["step"] for r in read_log(run_dir)] == [0, 1, 2, 3, 4]
