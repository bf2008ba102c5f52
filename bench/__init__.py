"""Benchmarks (`make bench`): speeds reported as ratios against a baseline measured in the same run."""

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), for the machine line of every benchmark."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def require_positive(cfg, prog: str, *fields: str) -> None:
    """Exit with a usage message naming the flag when one of `fields` of `cfg` is below 1 (no step to time)."""
    for field in fields:
        if getattr(cfg, field) < 1:
            raise SystemExit(f"{prog}: --{field.replace('_', '-')} must be at least 1, got {getattr(cfg, field)}")
