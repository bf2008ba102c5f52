"""The Python API as a user outside the repository meets it: README's five-line script on a run folder, and
`gpt` standing on its own (it never imports `train`)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from gpt.model import GPT, preset
from train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_script_loads_a_run_folder_and_generates(tmp_path):
    script = next(block for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                  if 'load_model("runs/sample/sft")' in block)
    assert len(script.strip().splitlines()) == 5
    torch.manual_seed(0)
    model = GPT(preset("nano"))
    save_checkpoint(tmp_path / "runs" / "sample" / "sft", 3, model, torch.optim.AdamW(model.parameters()), {}, keep=1)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # as `make setup`'s editable install does
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_gpt_does_not_import_train():
    code = ("import sys, gpt.checkpoint, gpt.chat, gpt.__main__\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'train'))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
