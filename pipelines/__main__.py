"""`python -m pipelines pretrain|sft|prefs|hellaswag [flags]`: run a data pipeline (each module parses its own flags)."""

import importlib
import sys

COMMANDS = {"pretrain": "pipelines.pretrain", "sft": "pipelines.sft", "prefs": "pipelines.prefs",
            "hellaswag": "pipelines.hellaswag"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m pipelines {{{','.join(COMMANDS)}}} [flags]  (--help for each)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage, file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
