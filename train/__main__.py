"""`python -m train pretrain|sft|dpo|rm|rl|hellaswag [flags]`: run a trainer, or the HellaSwag evaluation (each module
parses its own flags)."""

import importlib
import sys

from train.distributed import run_process

COMMANDS = {"pretrain": "train.pretrain", "sft": "train.sft", "dpo": "train.dpo", "rm": "train.rm", "rl": "train.rl",
            "hellaswag": "train.evaluate"}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    usage = f"usage: python -m train {{{','.join(COMMANDS)}}} [flags]  (--help for each)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage, file=sys.stderr)
        return 2
    try:
        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]) or 0
    except KeyboardInterrupt:  # in the start-up (imports, data checks) or the report: the loop handles its own
        print(f"\n{argv[0]}: interrupted before or after the training steps: no step is lost", file=sys.stderr)
        return 130


if __name__ == "__main__":
    run_process(main)
