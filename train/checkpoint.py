"""Training checkpoints: `RUN_DIR/ckpt/step-XXXXXX/` folders, written atomically, and a `latest` pointer
(read by gpt.checkpoint's `latest_checkpoint` and `resolve_checkpoint`).

A folder holds the model (by gpt.checkpoint.save_model: a transformers GPT-2 folder, which gpt.load_model,
INIT and GPT2LMHeadModel.from_pretrained read), the optimizer (`optimizer.safetensors`: every state
tensor as `state.<param index>.<name>`; `optimizer.json`: param groups and non-tensor state), the torch RNG
states (`rng.safetensors`) and `state.json` (step, data position, manifest sha256, train config, Python and
NumPy RNG states). Nothing is unpickled when loading. The folder is built under a temporary name and
renamed; `latest` (a text file naming the folder) is replaced atomically after it; the last K folders stay.
A run that tracks its best evaluation (SFT, DPO, the reward model) records it in state.json (`best`: step and
val_loss) and keeps `best`, a text file like `latest` naming that checkpoint, which is never pruned.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save

# The run folder's layout and pointers live in gpt.checkpoint (load_model takes run folders); the trainers
# import latest_checkpoint, best_checkpoint and resolve_checkpoint from here too
from gpt.checkpoint import (BEST, LATEST, STATE, best_checkpoint, ckpt_root, damaged, latest_checkpoint,  # noqa: F401
                            resolve_checkpoint, save_model)
from shards.io import atomic_directory, atomic_write, write_json

from .log import read_log


def _write_tensors(path: Path, tensors: dict) -> None:
    with atomic_write(path) as f:
        f.write(save(tensors))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, other = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                other[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def _read_tensors(path: Path) -> dict:
    """The tensors of the checkpoint file `path`; a missing or unreadable one is named, as damaged."""
    if not path.is_file():
        raise damaged(path, "missing", run=True)
    try:
        return load_file(path)
    except Exception as e:  # SafetensorError: a truncated or zero-byte file
        raise damaged(path, f"cannot read tensors ({type(e).__name__}: {e})", run=True) from None


def _read_json(path: Path):
    """The JSON of the checkpoint file `path`; one that does not parse is named, as damaged."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # UnicodeDecodeError too
        raise damaged(path, f"not valid JSON ({e})", run=True) from None


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    path = folder / "optimizer.json"
    if not path.is_file():
        raise damaged(path, "missing", run=True)
    meta = _read_json(path)
    tensors = _read_tensors(folder / "optimizer.safetensors")
    try:
        state: dict[int, dict] = {}
        for key, tensor in tensors.items():
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
        for key, value in meta["state"].items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a JSON or tensor name not as saved
        raise damaged(path, f"does not fit this run's optimizer with optimizer.safetensors ({type(e).__name__}: "
                            f"{e})", run=True) from None


def _rng_state() -> tuple[dict, dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    plain = {"numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "python": [py_version, list(py_state), py_gauss]}
    return tensors, plain


def _set_rng_state(folder: Path, plain: dict) -> None:
    tensors = _read_tensors(folder / "rng.safetensors")
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    try:
        name, keys, pos, has_gauss, gauss = plain["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, state, py_gauss = plain["python"]
        random.setstate((version, tuple(state), py_gauss))
    except (KeyError, TypeError, ValueError) as e:
        raise damaged(folder / STATE, f"its 'rng' states do not load ({type(e).__name__}: {e})", run=True) from None


def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, state: dict, keep: int,
                    chat_template: str | None = None) -> Path:
    """Write checkpoint `step` (model, optimizer, RNG, `state`) atomically, point `latest` at it, keep the last
    `keep` and the best: `state["best"]`, when given, names its step, and `best` points there (replaced before
    `latest`: a run killed between the two resumes from the previous checkpoint and writes both again);
    `chat_template` goes into the model folder's tokenizer_config.json."""
    root = ckpt_root(run_dir)
    final = root / f"step-{step:06d}"
    for stale in root.glob(".*.tmp*"):  # what a killed save left (the run folder is locked: none is running)
        if re.fullmatch(r"\.(step-\d+|latest|best)\.tmp(-\d+)?", stale.name):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    # This step's folder and later ones are of a run killed before `latest` named them (the loop saves only
    # after a step, so never the step `latest` names): this run's future replaces them.
    for folder, number in _checkpoints(root):
        if number >= step:
            shutil.rmtree(folder)
    with atomic_directory(final) as tmp:
        save_model(model, tmp, chat_template)
        tensors, meta = _optimizer_tensors(optimizer)
        _write_tensors(tmp / "optimizer.safetensors", tensors)
        write_json(tmp / "optimizer.json", meta)
        rng_tensors, rng_plain = _rng_state()
        _write_tensors(tmp / "rng.safetensors", rng_tensors)
        write_json(tmp / STATE, {**state, "step": step, "rng": rng_plain})
    best = root / f"step-{state['best']['step']:06d}" if state.get("best") else None
    for pointer, folder in ((BEST, best), (LATEST, final)):
        if folder is not None:
            with atomic_write(root / pointer, "w") as f:
                f.write(folder.name + "\n")
    _prune(root, (final, best), keep)
    return final


def mark_best(run_dir: str | Path, step: int, best: dict, keep: int) -> None:
    """Make the existing checkpoint `step` the best (`best`, its step and val_loss, into its state.json), point
    `best` at it and prune as `save_checkpoint` does: what saving it again after its evaluation would leave (a run
    stopped at that step saved it unevaluated; an evaluation changes none of the states a checkpoint holds)."""
    root = ckpt_root(run_dir)
    folder = root / f"step-{step:06d}"
    write_json(folder / STATE, {**read_state(folder), "best": best})
    with atomic_write(root / BEST, "w") as f:
        f.write(folder.name + "\n")
    _prune(root, (folder,), keep)


def finish_pruning(run_dir: str | Path) -> None:
    """Remove the checkpoint folders that the last save removes (all but `best` and the last `keep_checkpoints` of
    its config), which a run killed in that save after `latest` named it left; the run's own setting, not a
    rerun's."""
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        keep = read_state(latest)["config"].get("keep_checkpoints", 0)
        _prune(ckpt_root(run_dir), (latest, best_checkpoint(run_dir)), keep)


def _checkpoints(root: Path) -> list[tuple[Path, int]]:
    """The checkpoint folders under `root` (named step-<digits>; not, say, an export beside them) and their steps,
    by step (not by name: step-1000000 comes after step-999999)."""
    found = [(p, re.fullmatch(r"step-(\d+)", p.name)) for p in root.glob("step-*") if p.is_dir()]
    return sorted(((p, int(m.group(1))) for p, m in found if m), key=lambda checkpoint: checkpoint[1])


def _prune(root: Path, kept: tuple[Path | None, ...], keep: int) -> None:
    """Remove the checkpoint folders before the last `keep` (0: remove none), except the `kept` ones."""
    folders = [folder for folder, _ in _checkpoints(root)]
    for folder in folders[:-keep] if keep > 0 else []:
        if folder not in kept:
            shutil.rmtree(folder)


# what a resume reads from every checkpoint's state.json, and its type
STATE_KEYS = {"step": int, "total_steps": int, "manifest_sha256": str, "data_position": dict, "config": dict,
              "rng": dict}
JSON_TYPES = {int: "an integer", str: "a string", dict: "an object"}


def read_state(folder: Path) -> dict:
    """The state.json of checkpoint `folder`: a JSON object with `STATE_KEYS` (its config with `init`), its step the
    folder's (else the checkpoint is damaged: ValueError naming the file)."""
    path = folder / STATE
    state = _read_json(path)
    if not isinstance(state, dict):
        raise damaged(path, "not a JSON object", run=True)
    for key, kind in STATE_KEYS.items():
        if key not in state:
            raise damaged(path, f"no {key!r}", run=True)
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise damaged(path, f"{key!r} is {state[key]!r}, not {JSON_TYPES[kind]}", run=True)
    if "init" not in state["config"]:  # every run's config has it (resumed_init reads it)
        raise damaged(path, "its config has no 'init'", run=True)
    if not isinstance(state["config"]["init"], (str, type(None))):
        raise damaged(path, f"its config's 'init' is {state['config']['init']!r}, not a path or null", run=True)
    number = re.fullmatch(r"step-(\d+)", folder.name)
    if number and int(number.group(1)) != state["step"]:
        raise damaged(path, f"step {state['step']}, not the {folder.name} of its folder", run=True)
    return state


def best_evaluations(run_dir: str | Path) -> tuple[Path, dict | None, dict | None, dict | None]:
    """The checkpoint a finished run stands for (its best, else its latest: a run that keeps no best) and the
    log records of the evaluations at step 0, at that checkpoint's step and at the last step (None if absent)."""
    folder = best_checkpoint(run_dir) or latest_checkpoint(run_dir)
    evals = {r["step"]: r for r in read_log(run_dir) if "val_loss" in r}
    return folder, evals.get(0), evals.get(read_state(folder)["step"]), evals[max(evals)] if evals else None


def load_training_state(folder: Path, optimizer, state: dict) -> None:
    """Restore the optimizer and RNG states of checkpoint `folder`, whose state.json is `state`."""
    _load_optimizer(optimizer, folder)
    _set_rng_state(folder, state["rng"])
