"""A run folder damaged between runs, then --resume: a one-line error naming the damaged file, never a traceback."""

import json
import shutil

import pytest

from train.log import read_log
from train.pretrain import main as pretrain
from train_shards import one_thread, small_model, stopped_copy, write_test_shards  # noqa: F401 (an autouse fixture)


def flags(setup, run_dir):
    return ["--shards-dir", str(setup["shards"]), "--init", str(setup["init"]), "--run-dir", str(run_dir),
            "--model", "nano", "--seq-len", "32", "--batch-tokens", "128", "--micro-batch", "4", "--steps", "2",
            "--eval-every", "2", "--eval-tokens", "64", "--save-every", "1", "--keep-checkpoints", "0",
            "--sample-tokens", "0", "--no-progress", "--no-verify-data"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damaged-run")
    setup = {"shards": write_test_shards(tmp / "shards", eot=99), "init": small_model(tmp / "init"), "tmp": tmp}
    assert pretrain(flags(setup, tmp / "run")) == 0
    return setup


def resume_damaged(setup, tmp_path, damage, capsys) -> str:
    """Resume a copy of the run stopped after step 1, with `damage(checkpoint folder)` done to it; its error line."""
    run = stopped_copy(setup["tmp"] / "run", tmp_path / "run", 1)
    damage(run / "ckpt" / "step-000001")
    capsys.readouterr()
    assert pretrain(flags(setup, run) + ["--resume"]) == 1
    return capsys.readouterr().err.strip()


def truncate(name, size=None):
    def damage(folder):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2 if size is None else size])
    return damage


@pytest.mark.parametrize("name", ["optimizer.safetensors", "rng.safetensors", "optimizer.json", "model.safetensors"])
@pytest.mark.parametrize("size", [None, 0])
def test_a_truncated_training_state_file_is_named(setup, tmp_path, capsys, name, size):
    """model.safetensors was named without a word of what to do (the others said: an earlier checkpoint)."""
    err = resume_damaged(setup, tmp_path, truncate(name, size), capsys)
    assert err.startswith("pretrain: error: ") and f"step-000001/{name}: " in err and "damaged" in err, err
    assert "load an earlier step-* folder" in err, err


def edit_state(change):
    def damage(folder):
        state = json.loads((folder / "state.json").read_text())
        change(state)
        (folder / "state.json").write_text(json.dumps(state))
    return damage


@pytest.mark.parametrize("damage, says", [
    (truncate("state.json"), "not valid JSON"), (truncate("state.json", 0), "not valid JSON"),
    (lambda folder: (folder / "state.json").write_text("[]"), "not a JSON object"),
    (edit_state(lambda s: s.pop("rng")), "no 'rng'"), (edit_state(lambda s: s.pop("step")), "no 'step'"),
    (edit_state(lambda s: s.pop("manifest_sha256")), "no 'manifest_sha256'"),
    (edit_state(lambda s: s.update(step=1.0)), "'step' is 1.0, not an integer"),
    (edit_state(lambda s: s.update(total_steps="2")), "'total_steps' is '2', not an integer"),
    (edit_state(lambda s: s.update(config=[])), "'config' is [], not an object"),
    (edit_state(lambda s: s.update(rng={"numpy": 1})), "'rng' states do not load"),
    (edit_state(lambda s: s["config"].pop("init")), "its config has no 'init'"),
    (edit_state(lambda s: s["config"].update(init=5)), "its config's 'init' is 5, not a path or null"),
    # another step's state: it used to resume from step 2 with the weights of step 1
    (edit_state(lambda s: s.update(step=2)), "step 2, not the step-000001 of its folder"),
])
def test_a_damaged_state_json_is_named(setup, tmp_path, capsys, damage, says):
    err = resume_damaged(setup, tmp_path, damage, capsys)
    assert err.startswith("pretrain: error: ") and "step-000001/state.json: " in err and says in err, err


def edit_log(change):
    def damage(folder):
        log = folder.parent.parent / "log.jsonl"
        log.write_text(change(log.read_text().splitlines()))
    return damage


@pytest.mark.parametrize("damage, says", [
    (edit_log(lambda lines: "\n".join(["garbage", *lines]) + "\n"), "line 1: not JSON"),
    (edit_log(lambda lines: "\n".join([lines[0][:10], *lines[1:]]) + "\n"), "line 1: not JSON"),
    (edit_log(lambda lines: "\n".join([*lines, "[1]", ""])), "line 4: not a step record"),
    (edit_log(lambda lines: "\n".join([*lines, '{"loss": 1.0}', ""])), "line 4: not a step record"),
    (lambda folder: (folder.parent.parent / "log.jsonl").write_bytes(b"\xff\n"), "log.jsonl: not UTF-8 text"),
])
def test_a_damaged_log_is_named(setup, tmp_path, capsys, damage, says):
    err = resume_damaged(setup, tmp_path, damage, capsys)
    assert err.startswith("pretrain: error: ") and says in err, err


def test_a_half_last_log_line_and_a_missing_plot_resume(setup, tmp_path):
    run = stopped_copy(setup["tmp"] / "run", tmp_path / "run", 1)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    (run / "loss.png").unlink()
    assert pretrain(flags(setup, run) + ["--resume"]) == 0
    losses = lambda run_dir: [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_log(run_dir)]  # noqa: E731
    assert losses(run) == losses(setup["tmp"] / "run")
    assert (run / "loss.png").is_file()


@pytest.mark.parametrize("content, says", [(b"\xff\xfe\n", "ckpt/latest: not a folder name"),
                                           (b"step-000099\n", "ckpt/latest names 'step-000099', which is missing")])
def test_a_damaged_latest_pointer_is_named(setup, tmp_path, capsys, content, says):
    err = resume_damaged(setup, tmp_path, lambda folder: (folder.parent / "latest").write_bytes(content), capsys)
    assert err.startswith("pretrain: error: ") and says in err and "write the name of a complete" in err, err


def edit_optimizer_json(change):
    def damage(folder):
        meta = json.loads((folder / "optimizer.json").read_text())
        (folder / "optimizer.json").write_text(json.dumps(change(meta)))
    return damage


@pytest.mark.parametrize("change", [lambda meta: {}, lambda meta: [],
                                    lambda meta: {**meta, "param_groups": meta["param_groups"][:1]},
                                    lambda meta: {**meta, "state": {"x": 1}}])
def test_an_optimizer_json_of_another_shape_is_named(setup, tmp_path, capsys, change):
    err = resume_damaged(setup, tmp_path, edit_optimizer_json(change), capsys)
    assert err.startswith("pretrain: error: ") and "step-000001/optimizer.json: does not fit" in err, err
