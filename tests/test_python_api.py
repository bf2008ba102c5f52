"""The Python API as a user outside the repository meets it: README's five-line script on a run folder, and
`gpt` standing on its own (it never imports `train`)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt import generate, get_encoding, load_model, tokenize_batch_input
from gpt.model import GPT, preset
from gpt.template import render_prompt
from train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_script_loads_a_run_folder_and_generates(tmp_path):
    """README's script prints the greedy answer to its prompt of the run folder's checkpoint, as computed here."""
    script = next(block for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                  if 'load_model("runs/sample/sft")' in block)
    assert len(script.strip().splitlines()) == 5
    torch.manual_seed(0)
    model = GPT(preset("nano"))
    with torch.no_grad():  # far from the init: greedy tokens that vary, not one repeated
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    run_dir = tmp_path / "runs" / "sample" / "sft"
    save_checkpoint(run_dir, 3, model, torch.optim.AdamW(model.parameters()), {}, keep=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as `make setup`'s editable install does
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, timeout=120,
                          env={**env, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr.decode()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script's process: the same sums, the same greedy tokens
    try:
        ids, masks = tokenize_batch_input([render_prompt("Give three tips for staying healthy.")])
        tokens = generate(load_model(run_dir), ids, masks, temperature=0.0, max_steps=64)[0]
    finally:
        torch.set_num_threads(threads)
    assert len(set(tokens)) > 5 and proc.stdout == (get_encoding().decode(tokens) + "\n").encode()


def test_gpt_does_not_import_train():
    code = ("import sys, gpt.checkpoint, gpt.chat, gpt.__main__\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'train'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_pyproject_names_every_package():
    """setuptools installs only the packages pyproject.toml names, subpackages included: a wheel (`pip install .`)
    lacked train.tasks, and `python -m train rl` could not import its rewards."""
    tomllib = pytest.importorskip("tomllib")
    named = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in named if "." not in top
             for init in (ROOT / top).rglob("__init__.py")}
    assert found == named
