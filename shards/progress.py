"""Progress of long steps: a tqdm bar on a terminal, plain lines in a log (a file or a pipe: nohup, a cluster's job).

A bar redrawn with carriage returns fills a log with thousands of half-lines; `PlainProgress` writes a line at the
first update, then every PLAIN_EVERY_S seconds and when the count reaches its total: the count, the percentage, the
time since the start, the time left at the rate since the first update (which leaves out start-up and compilation)
and the postfix (a trainer's losses).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

PLAIN_EVERY_S = 60.0  # seconds between plain lines


def progress_bar(iterable=None, *, total: int | None = None, desc: str, unit: str, initial: int = 0,
                 enabled: bool = True, leave: bool = True, bytes_: bool = False, terminal: bool | None = None):
    """A progress bar over `iterable` or `total` units, starting at `initial`: tqdm where stderr is a terminal
    (`terminal`, by default whether it is), PlainProgress lines elsewhere, nothing unless `enabled`. `bytes_`
    counts bytes (sizes shown in KB, MB, GB of 1024). The result takes `update(n)`, `set_postfix`, `close` and
    `with`, and iterates over `iterable`."""
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty() if terminal is None else terminal:
        return tqdm(iterable, total=total, desc=desc, unit="B" if bytes_ else unit, initial=initial, leave=leave,
                    dynamic_ncols=True, unit_scale=bytes_, unit_divisor=1024)
    return PlainProgress(iterable, total, desc, unit, initial, bytes_)


def bytes_bar(total: int, desc: str, enabled: bool = True):
    """Progress (with time left) over `total` bytes; a terminal's bar is cleared when done."""
    return progress_bar(total=total, desc=desc, unit="B", enabled=enabled, leave=False, bytes_=True)


class PlainProgress:
    """Progress as lines on stderr (the interface of the tqdm calls above: update, set_postfix, close, with, n)."""

    disable = False

    def __init__(self, iterable, total: int | None, desc: str, unit: str, initial: int = 0, bytes_: bool = False):
        self.iterable, self.total, self.desc, self.unit, self.bytes = iterable, total, desc, unit, bytes_
        self.n, self.postfix = initial, {}
        self.start = time.monotonic()
        self.first: tuple[int, float] | None = None  # (count, time) at the first update
        self.last_line = -float("inf")
        self.ended = False  # the line at the total is shown (once: a count past it is throttled again)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        self.postfix = {**(ordered_dict or {}), **kwargs}

    def close(self) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        end = self.total is not None and self.n >= self.total and not self.ended
        if self.first is None:
            self.first = (self.n, now)
        elif now - self.last_line < PLAIN_EVERY_S and not end:
            return
        self.last_line, self.ended = now, self.ended or end
        print(self.line(now), file=sys.stderr, flush=True)

    def _count(self, n: float) -> str:
        return tqdm.format_sizeof(n, "B", 1024) if self.bytes else f"{n:,}"

    def line(self, now: float) -> str:
        count = self._count(self.n) + (f"/{self._count(self.total)}" if self.total else "")
        if not self.bytes:
            count += f" {self.unit}s"
        text = f"{self.desc}: {count}"
        if self.total:
            text += f" ({self.n / self.total:.1%})"
        text += f", {tqdm.format_interval(now - self.start)} elapsed"
        done, since = self.first
        if self.total and self.n > done:
            left = max(0, self.total - self.n) * (now - since) / (self.n - done)
            text += f", {tqdm.format_interval(left)} left"
        return text + "".join(f", {k} {v}" for k, v in self.postfix.items())
