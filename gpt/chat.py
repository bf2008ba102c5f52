"""The `generate` and `chat` commands of `python -m gpt`: completions of prompts, and an interactive loop.

Both load a checkpoint folder (ours or a Hugging Face GPT-2 folder), or a training run folder: its best
checkpoint (`ckpt/best`, kept by SFT, DPO and the reward model) or else its latest (`ckpt/latest`), on the CPU
by default. With `--template alpaca` each prompt is wrapped in the Stanford Alpaca no-input template, as SFT
models were trained; `--template auto` (the default) does so when the folder's tokenizer_config.json holds that
template as its chat template (SFT checkpoints and their exports do), or its `state.json` says `"sft": true`.
Both sample (temperature TEMPERATURE, nucleus TOP_P) unless `--temperature 0` asks for greedy decoding.

With the template, `chat` keeps the conversation: the model reads the finished turns, each its Alpaca prompt,
the answer and EOT, one after the other (what transformers' apply_chat_template renders from the checkpoint's
chat template), then the new prompt; the oldest turns are dropped when they would leave less than
`--max-steps` tokens of the context for the answer. Without the template every line is a fresh prompt.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shards.tokenizer import EOT, get_encoding

from .checkpoint import saved_chat_template
from .inference import check_options, generate, pad_batch, stream, tokenize_batch_input
from .template import CHAT_TEMPLATE, render_prompt

CKPT_HELP = ("checkpoint folder (ours or Hugging Face's), or a run folder: its best checkpoint (ckpt/best) if it "
             "has one, else its latest")
# Sampling by default, at the settings of common chat tools (Ollama's top_p, a temperature a little below its 0.8):
# greedy decoding of a small model tends to repeat itself. --temperature 0 is greedy.
TEMPERATURE = 0.7
TOP_P = 0.9
HELP = ("/reset forgets the conversation, /help shows this, /quit (or Ctrl-D, or Ctrl-C at the prompt) ends the "
        "chat; Ctrl-C during an answer stops it")


def add_arguments(p: argparse.ArgumentParser, *, chat: bool) -> None:
    """The options of `generate` (chat=False: --prompt, repeatable) or `chat` (prompts read from stdin)."""
    p.add_argument("--ckpt", required=True, help=CKPT_HELP)
    if not chat:
        p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--template", choices=("auto", "alpaca", "none"), default="auto",
                   help="wrap prompts in the Alpaca template (auto: when the checkpoint's tokenizer_config.json "
                        "holds it as chat_template, as SFT checkpoints do, or an older one's state.json says sft)")
    p.add_argument("--temperature", type=float, default=TEMPERATURE, help=f"default {TEMPERATURE}; 0 = greedy")
    p.add_argument("--max-steps", type=int, default=128 if chat else 256,
                   help="most new tokens per " + ("answer (the history leaves room for them)" if chat else "prompt"))
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=TOP_P,
                   help=f"sample within the nucleus of probability p (default {TOP_P}; 1 = all tokens)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="divide the positive logits, and multiply the negative ones, of the tokens already in the "
                        "prompt or answer by this (transformers' repetition_penalty; default 1 = none, try 1.2)")
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


def template_for(args, command: str) -> bool:
    """Whether `command` (generate, chat, serve) renders prompts in the Alpaca template (--template, auto: from the
    checkpoint); a checkpoint that cannot tell exits naming the flag."""
    try:
        return uses_template(args.ckpt, args.template)
    except ValueError as e:
        raise SystemExit(f"{command}: {e}; pass --template alpaca or none") from None


def load_for(args, command: str):
    """The model of --ckpt for `command` (generate, chat, serve), on --device; a run folder stands for its best or
    latest checkpoint (args.ckpt is updated to it)."""
    from .checkpoint import load_model, resolve_checkpoint
    from .kernels import native_bf16

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"{command}: --device {args.device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise SystemExit(f"{command}: --device {args.device}: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    try:
        args.ckpt = str(resolve_checkpoint(args.ckpt))
        # bf16 weights on a GPU that has it natively: half the bytes per decoding step, read by the CUDA graph
        return load_model(args.ckpt, device=device, dtype=torch.bfloat16 if native_bf16(device) else torch.float32)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{command}: {e}") from None


def _options(args, command: str) -> dict:
    """The decoding options of the command line, checked before any prompt: a bad one stops the command (a chat
    would otherwise refuse every line it reads)."""
    try:
        check_options(args.temperature, args.max_steps, args.top_k, args.top_p, args.repetition_penalty)
    except ValueError as e:
        raise SystemExit(f"{command}: {e}") from None
    if not -2 ** 63 <= args.seed < 2 ** 64:
        raise SystemExit(f"{command}: --seed must be an integer from -2**63 to 2**64 - 1, got {args.seed}")
    return dict(temperature=args.temperature, max_steps=args.max_steps, top_k=args.top_k, top_p=args.top_p,
                generator=torch.Generator(device=args.device).manual_seed(args.seed), truncate=args.truncate,
                repetition_penalty=args.repetition_penalty)


def run_generate(args) -> int:
    """Print the completion of every --prompt, generated as one batch."""
    for i, prompt in enumerate(args.prompt, 1):  # checked before the template makes every prompt non-empty
        if not prompt:
            raise SystemExit(f"generate: prompt {i} of {len(args.prompt)} is empty")
    model = load_for(args, "generate")
    template = template_for(args, "generate")
    prompts = [render_prompt(p) if template else p for p in args.prompt]
    options = _options(args, "generate")
    try:
        input_ids, masks = tokenize_batch_input(prompts)
        rows = generate(model, input_ids, masks, **options, progress=True)
    except ValueError as e:
        raise SystemExit(f"generate: {e}") from None
    enc = get_encoding()
    for i, (prompt, row) in enumerate(zip(args.prompt, rows), 1):
        ended = bool(row) and row[-1] == EOT
        text = enc.decode(row[:-1] if ended else row)
        print(f"=== prompt {i}: {prompt}\n{text}\n=== ({len(row)} tokens, {'ended by EOT' if ended else 'cut'})")
    return 0


def prompt_tokens(text: str, template: bool) -> list[int]:
    """The tokens of a user's message: in the Alpaca prompt with the template, else the text as it is."""
    return get_encoding().encode_ordinary(render_prompt(text) if template else text)


@dataclass
class History:
    """The finished turns of a chat, as one token sequence: each turn is its prompt (rendered in the Alpaca
    template), the answer and EOT. `room` is how many tokens the turns and the next prompt may take."""
    room: int
    turns: list[list[int]] = field(default_factory=list)

    def with_prompt(self, prompt: list[int]) -> tuple[list[int], int]:
        """The turns, then `prompt`; the oldest turns are left out first until they fit in `room` with it.
        Returns the tokens and how many turns were left out (`drop` forgets them once the prompt is accepted)."""
        dropped = 0
        while dropped < len(self.turns) and sum(map(len, self.turns[dropped:])) + len(prompt) > self.room:
            dropped += 1
        return [token for turn in self.turns[dropped:] for token in turn] + prompt, dropped

    def drop(self, turns: int) -> None:
        """Forget the `turns` oldest turns."""
        del self.turns[:turns]

    def add(self, prompt: list[int], answer: list[int]) -> None:
        """A finished turn: `answer` without EOT, which is added (to a cut answer too, as the chat template
        renders every answer)."""
        self.turns.append(prompt + answer + [EOT])


def run_chat(args, stdin=None, stdout=None) -> int:
    """Read one prompt per line until EOF, /quit or Ctrl-C; stream each answer as it is generated. With the
    template the conversation so far comes before each prompt (History; /reset forgets it). Ctrl-C during an
    answer stops that answer, which is then left out of the history with its prompt."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    model = load_for(args, "chat")
    template = template_for(args, "chat")
    history = History(model.config.block_size - args.max_steps) if template else None
    interactive = stdin.isatty()
    enc = get_encoding()
    options = _options(args, "chat")
    mode = "Alpaca template, with history" if template else "plain completion, no history"
    print(f"chat with {args.ckpt} ({mode}); /help lists the commands", file=stdout)
    while True:
        if interactive:
            print("> ", end="", file=stdout, flush=True)
        try:
            line = stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat, as EOF does
            print(file=stdout)
            return 0
        if not line:  # EOF (Ctrl-D): end the prompt's line too
            if interactive:
                print(file=stdout)
            return 0
        text = line.removesuffix("\n").removesuffix("\r")  # a line ending, LF or CRLF, is not the prompt's
        command = text.strip()
        if command == "/quit":
            return 0
        if command in ("/help", "/reset"):
            if command == "/reset" and history is not None:
                history.turns.clear()
            print(HELP if command == "/help" else "(conversation reset)", file=stdout, flush=True)
            continue
        if not command:
            continue
        prompt = prompt_tokens(text, template)
        tokens, dropped = history.with_prompt(prompt) if history is not None else (prompt, 0)
        try:
            steps = stream(model, *pad_batch([tokens]), **options)
        except ValueError as e:  # a refused prompt leaves the conversation as it was
            print(f"error: {e}", file=stdout, flush=True)
            continue
        if dropped:
            history.drop(dropped)
            print(f"(the {dropped} oldest turn(s) left out: the conversation no longer fits the context of "
                  f"{model.config.block_size} tokens with --max-steps {args.max_steps})", file=stdout)
        utf8, end, answer = codecs.getincrementaldecoder("utf-8")(errors="replace"), "", []
        try:
            for (token,) in steps:
                if token is not None and token != EOT:
                    answer.append(token)
                    print(utf8.decode(enc.decode_single_token_bytes(token)), end="", file=stdout, flush=True)
        except KeyboardInterrupt:  # Ctrl-C while answering stops this answer only
            end = " [stopped]"
        print(utf8.decode(b"", final=True) + end, file=stdout, flush=True)
        if history is not None and not end:
            history.add(prompt, answer)
