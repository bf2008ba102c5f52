"""`python -m gpt`: export-hf, generate, chat."""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export-hf", help="write a folder that transformers.GPT2LMHeadModel loads")
    p.add_argument("ckpt")
    p.add_argument("out")
    p = sub.add_parser("generate", help="print completions of prompts")
    p = sub.add_parser("chat", help="interactive chat, streaming answers")
    args = parser.parse_args(argv)
    raise SystemExit(f"{args.command}: not implemented yet")


if __name__ == "__main__":
    sys.exit(main())
