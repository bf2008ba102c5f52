"""`python -m gpt`: export-hf, generate, chat, serve (the OpenAI-compatible server: `gpt.serve`, its own flags)."""

import argparse
import sys
from pathlib import Path

from . import chat


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from . import serve
        return serve.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m gpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export-hf", help="write the model alone (no training state) as a folder that "
                                         "transformers.GPT2LMHeadModel loads (a reward model: "
                                         "GPT2ForSequenceClassification), from any checkpoint")
    p.add_argument("ckpt", help=chat.CKPT_HELP)
    p.add_argument("out", help="folder to write (config.json, model.safetensors, tokenizer files)")
    p = sub.add_parser("generate", help="print completions of prompts")
    chat.add_arguments(p, chat=False)
    p = sub.add_parser("chat", help="interactive chat, streaming answers")
    chat.add_arguments(p, chat=True)
    sub.add_parser("serve", help="an OpenAI-compatible HTTP server (python -m gpt serve --help)")
    args = parser.parse_args(argv)
    if args.command == "export-hf":
        return _export_hf(args)
    if args.command == "generate":
        return chat.run_generate(args)
    return chat.run_chat(args)


def _export_hf(args) -> int:
    from shards.io import atomic_directory
    from .checkpoint import (is_reward_model, load_model, load_reward_model, resolve_checkpoint, save_model,
                             saved_chat_template)
    from .template import CHAT_TEMPLATE

    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"export-hf: {out} exists; choose another OUT or remove it first")
    try:
        ckpt = resolve_checkpoint(args.ckpt)
        reward = is_reward_model(ckpt)
        model = (load_reward_model if reward else load_model)(ckpt)
        template = CHAT_TEMPLATE if chat.uses_template(ckpt, "auto") else saved_chat_template(ckpt)
        with atomic_directory(out) as tmp:  # a killed export leaves no half-written folder under OUT
            save_model(model, tmp, template)
    except (OSError, ValueError) as e:
        raise SystemExit(f"export-hf: {e}") from None
    architecture = "GPT2ForSequenceClassification" if reward else "GPT2LMHeadModel"
    print(f"wrote {out}: load it with transformers.{architecture}.from_pretrained({str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
