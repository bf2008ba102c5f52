"""The `generate` and `chat` commands of `python -m gpt`: completions of prompts, and an interactive loop.

Both load a checkpoint folder (ours or a Hugging Face GPT-2 folder), or the latest checkpoint of a
training run folder (one holding `ckpt/latest`), on the CPU by default. With
`--template alpaca` each prompt is wrapped in the Stanford Alpaca no-input template, as SFT models were
trained; `--template auto` (the default) does so when the folder's tokenizer_config.json holds that
template as its chat template (SFT checkpoints and their exports do), or its `state.json` says `"sft": true`.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

import torch

from shards.tokenizer import EOT, get_encoding

from .checkpoint import saved_chat_template
from .inference import generate, stream, tokenize_batch_input
from .template import CHAT_TEMPLATE, render_prompt

CKPT_HELP = "checkpoint folder (ours or Hugging Face's), or a run folder: its latest checkpoint"


def add_arguments(p: argparse.ArgumentParser, *, chat: bool) -> None:
    """The options of `generate` (chat=False: --prompt, repeatable) or `chat` (prompts read from stdin)."""
    p.add_argument("--ckpt", required=True, help=CKPT_HELP)
    if not chat:
        p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--template", choices=("auto", "alpaca", "none"), default="auto",
                   help="wrap prompts in the Alpaca template (auto: when the checkpoint's tokenizer_config.json "
                        "holds it as chat_template, as SFT checkpoints do, or an older one's state.json says sft)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-steps", type=int, default=256, help="most new tokens per prompt")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample within the nucleus of probability p")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    p.add_argument("--truncate", action="store_true",
                   help="left-truncate prompts that leave no room for --max-steps tokens instead of refusing them")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")


def uses_template(ckpt, choice: str) -> bool:
    """Whether prompts get the Alpaca template: `choice` alpaca/none, or auto: when the folder's
    tokenizer_config.json holds the Alpaca chat template, or (older checkpoints) its state.json says "sft".
    Raises ValueError naming an unreadable file."""
    if choice != "auto":
        return choice == "alpaca"
    if saved_chat_template(ckpt) == CHAT_TEMPLATE:
        return True
    state = Path(ckpt) / "state.json"
    if not state.is_file():
        return False
    try:
        return json.loads(state.read_text()).get("sft") is True
    except (ValueError, AttributeError):
        raise ValueError(f"{state}: not a JSON object") from None


def _template(args, command: str) -> bool:
    try:
        return uses_template(args.ckpt, args.template)
    except ValueError as e:
        raise SystemExit(f"{command}: {e}; pass --template alpaca or none") from None


def _load(args, command: str):
    """The model of --ckpt; a run folder stands for its latest checkpoint (args.ckpt is updated to it)."""
    from .checkpoint import load_model, resolve_checkpoint

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"{command}: --device {args.device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"{command}: --device {args.device}: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    try:
        args.ckpt = str(resolve_checkpoint(args.ckpt))
        return load_model(args.ckpt, device=device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{command}: {e}") from None


def _options(args) -> dict:
    return dict(temperature=args.temperature, max_steps=args.max_steps, top_k=args.top_k, top_p=args.top_p,
                generator=torch.Generator(device=args.device).manual_seed(args.seed), truncate=args.truncate)


def run_generate(args) -> int:
    """Print the completion of every --prompt, generated as one batch."""
    for i, prompt in enumerate(args.prompt, 1):  # checked before the template makes every prompt non-empty
        if not prompt:
            raise SystemExit(f"generate: prompt {i} of {len(args.prompt)} is empty")
    model = _load(args, "generate")
    template = _template(args, "generate")
    prompts = [render_prompt(p) if template else p for p in args.prompt]
    try:
        input_ids, masks = tokenize_batch_input(prompts)
        rows = generate(model, input_ids, masks, **_options(args), progress=True)
    except ValueError as e:
        raise SystemExit(f"generate: {e}") from None
    enc = get_encoding()
    for i, (prompt, row) in enumerate(zip(args.prompt, rows), 1):
        ended = bool(row) and row[-1] == EOT
        text = enc.decode(row[:-1] if ended else row)
        print(f"=== prompt {i}: {prompt}\n{text}\n=== ({len(row)} tokens, {'ended by EOT' if ended else 'cut'})")
    return 0


def run_chat(args, stdin=None, stdout=None) -> int:
    """Read one prompt per line until EOF, /quit or Ctrl-C; stream each answer as it is generated (no history).
    Ctrl-C during an answer stops that answer."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model = _load(args, "chat")
    template = _template(args, "chat")
    interactive = stdin.isatty()
    enc = get_encoding()
    options = _options(args)
    print(f"chat with {args.ckpt} ({'Alpaca template' if template else 'plain completion'}); /quit, EOF or Ctrl-C ends",
          file=stdout)
    while True:
        if interactive:
            print("> ", end="", file=stdout, flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat, as EOF does
            print(file=stdout)
            return 0
        if not line or line.strip() == "/quit":
            return 0
        text = line.rstrip("\n")
        if not text.strip():
            continue
        try:
            input_ids, masks = tokenize_batch_input([render_prompt(text) if template else text])
            steps = stream(model, input_ids, masks, **options)
        except ValueError as e:
            print(f"error: {e}", file=stdout, flush=True)
            continue
        utf8, end = codecs.getincrementaldecoder("utf-8")(errors="replace"), ""
        try:
            for (token,) in steps:
                if token is not None and token != EOT:
                    print(utf8.decode(enc.decode_single_token_bytes(token)), end="", file=stdout, flush=True)
        except KeyboardInterrupt:  # Ctrl-C while answering stops this answer only
            end = " [stopped]"
        print(utf8.decode(b"", final=True) + end, file=stdout, flush=True)
