"""Run logs on rank 0: `RUN_DIR/log.jsonl` (one object per step), progress, and `RUN_DIR/loss.png`.

Progress (shards.progress) is a bar on a terminal and plain lines in a log, with the last loss and val_loss.

Each line of log.jsonl has at least `step` (optimizer steps done), `loss`, `lr`, `grad_norm`, `tokens_per_s`,
and on evaluation steps `val_loss` (plus whatever metrics the trainer adds, `mfu` in bf16 on a GPU); the first
line, step 0, is the evaluation before any step: `val_loss` and the evaluation's metrics, no `loss`. A resumed run
first drops the lines after its checkpoint (and adds the evaluation a stop signal skipped at that step), so
the file reads like one uninterrupted run; a fresh start (step 0) replaces the file.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from shards.io import atomic_write
from shards.progress import progress_bar

LOG = "log.jsonl"
PLOT = "loss.png"


def read_log(run_dir: str | Path) -> list[dict]:
    """The records of RUN_DIR/log.jsonl; a last line cut short by a killed run is left out. Raises ValueError naming
    the file and line of any other that is not a step record (a JSON object with an integer `step`)."""
    path = Path(run_dir) / LOG
    if not path.exists():
        return []
    fix = "(a --resume rewrites the log up to its checkpoint's step)"
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); repair or delete it {fix}") from None
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # cut short by a killed run
                break
            raise ValueError(f"{path}, line {number}: not JSON ({e}); repair or delete that line {fix}") from None
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise ValueError(f"{path}, line {number}: not a step record (a JSON object with an integer step); "
                             f"repair or delete that line {fix}")
        records.append(record)
    return records


class RunLog:
    """Appends step records and redraws the loss plot; does nothing on ranks other than 0."""

    def __init__(self, run_dir: str | Path, enabled: bool, start_step: int, total_steps: int, progress: bool,
                 desc: str = "train", plot_metrics: tuple[str, ...] = (), terminal: bool | None = None):
        """`terminal`: whether progress is a bar or plain lines (default: whether stderr is a terminal)."""
        self.dir, self.enabled, self.plot_metrics = Path(run_dir), enabled, plot_metrics
        self.records: list[dict] = []
        self.shown: dict[str, str] = {}  # the bar's postfix
        self.bar = progress_bar(total=total_steps, initial=start_step, desc=desc, unit="step",
                                enabled=enabled and progress, terminal=terminal)
        if not enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        # a fresh start (step 0) begins an empty log: a failed attempt's step-0 record is not this run's
        self.records = [r for r in read_log(self.dir) if r["step"] <= start_step] if start_step else []
        if start_step and not any(r["step"] == start_step for r in self.records):
            self._warn_lost(start_step)
        self._rewrite()

    def _warn_lost(self, start_step: int) -> None:
        """Warn that a resumed run's log lacks the steps up to its checkpoint's (deleted, or an older copy put
        back): the log and the loss plot then lack them too."""
        path = self.dir / LOG
        first = self.records[-1]["step"] + 1 if self.records else 0
        held = ("is missing" if not path.exists() else f"ends at step {first - 1}" if self.records else
                "holds no step record")
        tqdm.write(f"warning: {path} {held}; this run resumes at step {start_step}, so its log and {PLOT} lack "
                   f"steps {first} to {start_step}", file=sys.stderr)

    def _rewrite(self) -> None:
        """Replace log.jsonl with `records`, atomically, and open it for appending."""
        with atomic_write(self.dir / LOG, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.records)
        self._file = open(self.dir / LOG, "ab", buffering=0)  # no buffer: nothing left to fail again at close

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        line = memoryview((json.dumps(record) + "\n").encode())
        try:
            while line:  # a write cut short by a full disk is followed by one that fails
                line = line[self._file.write(line):]
        except OSError as e:  # a full disk: name the file, as atomic_write does
            raise OSError(e.errno, f"{e.strerror} while appending to {self.dir / LOG}") from e
        self._show(record)

    def amend(self, step: int, values: dict) -> dict:
        """Add `values` to the record of `step` if it is the last one (a resumed run's step, evaluated late),
        else append them as its record; the file is rewritten. Returns the record."""
        record = {"step": step, **values}
        if not self.enabled:
            return record
        if self.records and self.records[-1]["step"] == step:
            record = {**self.records.pop(), **values}
        self.records.append(record)
        self._file.close()
        self._rewrite()
        self._show(record)
        return record

    def _show(self, record: dict) -> None:
        self.shown = {k: f"{record[k]:.4f}" if k in record else self.shown[k]  # the last of each, loss first
                      for k in ("loss", "val_loss") if k in record or k in self.shown}
        self.bar.set_postfix(self.shown, refresh=False)  # before the update, which redraws the bar with it
        if record["step"] > self.bar.n:  # not a late evaluation of the step it stands at (a resumed run's)
            self.bar.update(record["step"] - self.bar.n)

    def print(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def plot(self) -> None:
        """Redraw RUN_DIR/loss.png: train loss per step and validation loss at each evaluation (and the
        `plot_metrics`, e.g. SFT's EOT rate, on a right axis)."""
        if not self.enabled:
            return
        train = [(r["step"], r["loss"]) for r in self.records if "loss" in r and math.isfinite(r["loss"])]
        val = [(r["step"], r["val_loss"]) for r in self.records if "val_loss" in r]
        import matplotlib  # here, not at the top: 0.8 s of every trainer's start (and each torchrun worker's)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        if train:
            ax.plot(*zip(*train), label="train", linewidth=1)
        if val:
            ax.plot(*zip(*val), "o-", label="validation")
        ax.set_xlabel("step")
        # two lines: on one, the label was taller than the figure and cut off
        ax.set_ylabel("loss (the stage's mean:\nnats per token, pair or answer token)")
        ax.grid(alpha=0.3)
        lines, labels = ax.get_legend_handles_labels()
        extra = {k: [(r["step"], r[k]) for r in self.records if k in r] for k in self.plot_metrics}
        if any(extra.values()):
            right = ax.twinx()
            for i, (name, points) in enumerate(extra.items()):
                if points:
                    right.plot(*zip(*points), "s--", label=name, color=f"C{2 + i}")  # C0, C1: the losses
            right.set_ylabel(", ".join(extra))
            more, more_labels = right.get_legend_handles_labels()
            lines, labels = lines + more, labels + more_labels
        ax.legend(lines, labels)
        fig.tight_layout()
        with atomic_write(self.dir / PLOT) as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            self._file.close()
