"""`python -m gpt serve`: an OpenAI-compatible HTTP server for one checkpoint (`make serve`).

The checkpoint (ours, a run folder, or a Hugging Face GPT-2 folder) is loaded once; the standard library's
`ThreadingHTTPServer` answers `GET /v1/models`, `POST /v1/completions` and `POST /v1/chat/completions` in
OpenAI's JSON shapes, streamed as Server-Sent Events with `"stream": true`. Decoding is `gpt.inference.stream`'s,
one request at a time (a lock: concurrent requests queue). A completion's prompt is the text as sent (a list of
prompts is one batch); a chat's messages are rendered as `make chat` renders its conversation: each finished
turn is the user message in the Alpaca prompt, the assistant message and EOT, then the last user message's
prompt. A model without the template (a pretrained one) takes one user message, as plain text. What cannot be
rendered that way (a system message, two user messages in a row, a conversation ending with the assistant) is
refused with a 400 naming the field, as are options that the server does not implement (`n` > 1, `echo`,
`logprobs`, penalties other than `repetition_penalty`, tools).

The text of a choice ends at EOT or at the first stop string (finish_reason "stop", the stop string left out), or
after `max_tokens` tokens or at the end of the model's context ("length"). Streamed, a piece of text is sent as soon
as no stop string can begin in it, so the pieces put together are the text the same request gets unstreamed.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar, NoReturn
from urllib.parse import unquote, urlsplit

import torch

from shards import cli
from shards.tokenizer import EOT, get_encoding

from .chat import History, load_for, prompt_tokens, template_for
from .inference import check_options, pad_batch, stream
from .model import GPT

COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; a chat answers up to the end of the context
MAX_BODY = 16 * 2**20  # bytes of a request body
SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "stream",
            "stream_options", "n")
IGNORED = ("model", "user", "metadata", "store", "service_tier")  # accepted, with no effect on the answer
# accepted at their default only: what this server does not implement
UNSUPPORTED = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "logprobs": False,
               "top_logprobs": 0, "best_of": 1, "echo": False, "suffix": "", "tools": [], "functions": [],
               "tool_choice": "none", "function_call": "none", "parallel_tool_calls": False,
               "response_format": {"type": "text"}}
COMPLETION_FIELDS = {"prompt", *SAMPLING, *IGNORED, "presence_penalty", "frequency_penalty", "logit_bias",
                     "logprobs", "best_of", "echo", "suffix"}
CHAT_FIELDS = {"messages", "max_completion_tokens", *SAMPLING, *IGNORED, *UNSUPPORTED} - {"best_of", "echo", "suffix"}


@dataclass
class ServeConfig:
    """Serve one checkpoint with OpenAI's completions and chat completions API."""
    CHOICES: ClassVar[dict] = {"template": ("auto", "alpaca", "none")}
    HELP: ClassVar[dict] = {
        "ckpt": "checkpoint folder (ours or Hugging Face's), or a run folder: its best checkpoint (ckpt/best) if it "
                "has one, else its latest (required)",
        "port": "0: any free port (printed)",
        "device": "cpu, cuda, cuda:1, ...",
        "model_name": "the model's id in the API (default: the name of the --ckpt folder)",
        "max_tokens_limit": "most new tokens a request may ask for (default: the model's context)",
        "template": "render chat messages in the Alpaca template (auto: as `make chat` decides, from the checkpoint)"}

    ckpt: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    model_name: str | None = None
    max_tokens_limit: int | None = None
    template: str = "auto"


class RequestError(Exception):
    """A request refused: its HTTP status and OpenAI's error object."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


class Choice:
    """The text of one choice as its tokens come: decoded incrementally (UTF-8 split across tokens waits for its
    last byte), cut before the first stop string, and released only where no stop string can still begin."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.tokens, self.finish = stops, "", 0, 0, None
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        """Take the next token; return the text it releases (`finish` is set once the choice has ended)."""
        self.tokens += 1
        if token == EOT:
            return self._take(self.utf8.decode(b"", final=True), "stop")
        return self._take(self.utf8.decode(get_encoding().decode_single_token_bytes(token)))

    def end(self) -> str:
        """End the choice at max_tokens or the end of the context: the rest of its text."""
        return self._take(self.utf8.decode(b"", final=True), "length")

    def _take(self, piece: str, finish: str | None = None) -> str:
        self.text += piece
        # a stop string begins after the text sent: none was complete before, and a partial one was held back
        found = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if found:
            self.text, finish = self.text[:min(found)], "stop"
        held = 0 if finish else max((k for s in self.stops for k in range(1, len(s))
                                     if self.text.endswith(s[:k]) and k <= len(self.text) - self.sent), default=0)
        start, self.sent = self.sent, len(self.text) - held
        self.finish = finish
        return self.text[start:self.sent]


class Server(ThreadingHTTPServer):
    """The HTTP server of one model: `name` in the API, `template` whether chat messages get the Alpaca template,
    `limit` the most new tokens a request may ask for. `lock` lets one generation run at a time."""
    daemon_threads = True  # Ctrl-C does not wait for open connections
    quiet = False  # no line per request on stderr

    def __init__(self, address: tuple[str, int], model: GPT, name: str, template: bool, limit: int | None = None):
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a gpt.GPT, got {type(model).__name__}")
        if limit is not None and limit < 1:
            raise ValueError(f"--max-tokens-limit must be at least 1, got {limit}")
        self.model, self.name, self.template, self.limit = model, name, template, limit
        self.lock, self.created = threading.Lock(), int(time.time())
        super().__init__(address, Handler)

    def handle_error(self, request, client_address) -> None:
        """A client gone mid-request is no error of the server's; anything else is printed."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "minigpt2"}

    def generation(self, rows: list[list[int]], options: dict, choices: list[Choice]) -> Iterator[list[tuple]]:
        """Generate the batch `rows` under the lock into `choices` (one per row): yields each step's events, (row,
        text, finish_reason or None), for the rows that released text or ended; a row that ended takes no more
        tokens, and the batch stops once every row has ended. A batch ends when its longest prompt fills the
        context: where that would cut a shorter prompt before its max_tokens, the rows are generated one by one."""
        lengths = set(map(len, rows))
        together = len(lengths) == 1 or max(lengths) + options["max_steps"] <= self.model.config.block_size
        with self.lock:
            for batch in [range(len(rows))] if together else [[i] for i in range(len(rows))]:
                steps = stream(self.model, *pad_batch([rows[i] for i in batch]), **options)
                try:
                    for step in steps:
                        events = [(i, choices[i].add(token), choices[i].finish) for i, token in zip(batch, step)
                                  if choices[i].finish is None and token is not None]
                        events = [event for event in events if event[1] or event[2]]
                        if events:
                            yield events
                        if all(choices[i].finish for i in batch):
                            break
                finally:
                    steps.close()
                ended = [(i, choices[i].end(), "length") for i in batch if choices[i].finish is None]
                if ended:
                    yield ended


def _number(body: dict, name: str, default, *, integer: bool = False, low=None, high=None, above=None):
    """The number `body[name]` (`default` when absent or null), checked; a RequestError naming it."""
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise RequestError(f"{name} must be {kind}, got {json.dumps(value)}", name)
    if (low is not None and value < low) or (high is not None and value > high) or \
            (above is not None and value <= above):
        bounds = [f"> {above}" if above is not None else None, f">= {low}" if low is not None else None,
                  f"<= {high}" if high is not None else None]
        raise RequestError(f"{name} must be {kind} {' and '.join(b for b in bounds if b)}, got {value}", name)
    return value


def _check_fields(body: dict, known: set[str]) -> None:
    """Refuse a field this endpoint does not know, and one it does not implement unless at its default."""
    for name, value in body.items():
        if name not in known:
            raise RequestError(f"unrecognized field {name!r}", name)
        if name in UNSUPPORTED and value is not None and value != UNSUPPORTED[name]:
            raise RequestError(f"{name} is not supported by this server (only {json.dumps(UNSUPPORTED[name])})", name)
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise RequestError(f"model must be a string, got {json.dumps(body['model'])}", "model")


def _options(server: Server, body: dict, default_max_tokens: int | None) -> tuple:
    """The decoding options of a request (for `stream`), its stop strings, whether it streams and whether it
    asks for the usage in the stream."""
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is not None:
        raise RequestError("give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    block = server.model.config.block_size
    max_tokens = _number(body, field, None, integer=True, low=0)
    if max_tokens is not None and server.limit is not None and max_tokens > server.limit:
        raise RequestError(f"{field} must be at most {server.limit} on this server (--max-tokens-limit), "
                           f"got {max_tokens}", field)
    if max_tokens is None:
        max_tokens = min(default_max_tokens or block, server.limit or block)
    temperature = _number(body, "temperature", 1.0, low=0)
    top_p = _number(body, "top_p", 1.0, above=0, high=1)
    top_k = _number(body, "top_k", None, integer=True, low=1)
    penalty = _number(body, "repetition_penalty", 1.0, above=0)
    seed = _number(body, "seed", None, integer=True, low=-2 ** 63, high=2 ** 64 - 1)
    if _number(body, "n", 1, integer=True) != 1:
        raise RequestError(f"n must be 1: this server makes one choice per prompt, got {body['n']}", "n")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(f"stop must be a non-empty string or a list of them, got {json.dumps(stop)}", "stop")
    streamed = body.get("stream")
    if streamed is not None and not isinstance(streamed, bool):
        raise RequestError(f"stream must be true or false, got {json.dumps(streamed)}", "stream")
    usage = body.get("stream_options")
    if usage is not None:
        if not streamed:
            raise RequestError("stream_options is only allowed with stream: true", "stream_options")
        if not isinstance(usage, dict) or set(usage) - {"include_usage"} or \
                not isinstance(usage.get("include_usage", False), bool):
            raise RequestError(f'stream_options must be {{"include_usage": true or false}}, got {json.dumps(usage)}',
                               "stream_options")
        usage = usage.get("include_usage", False)
    device = next(server.model.parameters()).device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    try:
        check_options(temperature, max_tokens, top_k, top_p, penalty)
    except ValueError as e:
        raise RequestError(str(e)) from None
    options = dict(temperature=temperature, max_steps=max_tokens, top_k=top_k, top_p=top_p,
                   repetition_penalty=penalty, generator=generator)
    return options, stops, bool(streamed), bool(usage)


def _fits(server: Server, rows: list[list[int]], param: str, what: str) -> None:
    """Refuse a prompt that leaves no room for a new token in the model's context."""
    block = server.model.config.block_size
    for i, row in enumerate(rows):
        if len(row) >= block:
            which = what if len(rows) == 1 else f"{what} {i + 1} of {len(rows)}"
            raise RequestError(f"{which} has {len(row)} tokens: this model's context is {block} tokens, with room for "
                               "at least one new token", param, code="context_length_exceeded")


def completion_request(server: Server, body: dict) -> tuple:
    """The prompts' tokens and the options of a /v1/completions request."""
    _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        got = "nothing" if prompt is None else json.dumps(prompt)[:80]
        raise RequestError(f"prompt must be a string or a non-empty list of strings (token ids are not supported), "
                           f"got {got}", "prompt")
    for i, p in enumerate(prompts):
        if not p:
            raise RequestError("prompt is empty" if len(prompts) == 1 else
                               f"prompt {i + 1} of {len(prompts)} is empty", "prompt")
    options = _options(server, body, COMPLETION_MAX_TOKENS)
    rows = get_encoding().encode_ordinary_batch(prompts)
    _fits(server, rows, "prompt", "the prompt")
    return rows, *options


def chat_request(server: Server, body: dict) -> tuple:
    """The conversation's tokens and the options of a /v1/chat/completions request: each finished turn the user's
    message in the Alpaca prompt, the assistant's message and EOT, then the last user message's prompt (how
    `make chat` keeps a conversation, and the checkpoint's chat_template renders it); without the template, the
    one user message as it is."""
    _check_fields(body, CHAT_FIELDS)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"messages must be a non-empty list of messages, got {json.dumps(messages)[:80]}",
                           "messages")
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{field} must be an object with role and content, got {json.dumps(message)[:80]}",
                               field)
        role, content = message.get("role"), message.get("content")
        expected = "user" if i % 2 == 0 else "assistant"
        if role in ("system", "developer"):
            raise RequestError(f"{field}.role: {role!r} messages are not supported: the Alpaca chat template of this "
                               "model has no system prompt (put the instructions in the user message)", f"{field}.role")
        if role != expected:
            raise RequestError(f"{field}.role must be {expected!r}, got {json.dumps(role)}: the conversation is user "
                               "and assistant messages in turn, from the user's", f"{field}.role")
        if not isinstance(content, str):
            raise RequestError(f"{field}.content must be a string, got {json.dumps(content)[:80]}", f"{field}.content")
        for name in message:
            if name not in ("role", "content"):
                raise RequestError(f"{field}.{name} is not supported: a message is its role and content",
                                   f"{field}.{name}")
    if messages[-1]["role"] != "user":
        raise RequestError(f"messages[{len(messages) - 1}] is the assistant's: the conversation must end with a user "
                           "message, which the model answers", f"messages[{len(messages) - 1}].role")
    if not server.template and len(messages) > 1:
        raise RequestError(f"this model has no chat template (a pretrained model, or --template none): a chat is "
                           f"one user message, completed as plain text, got {len(messages)} messages; use "
                           "/v1/completions or --template alpaca", "messages")
    options = _options(server, body, None)
    contents = [message["content"] for message in messages]
    history = History(room=math.inf)  # no turn is left out: _fits refuses a conversation over the context
    for user, answer in zip(contents[:-1:2], contents[1::2]):
        history.add(prompt_tokens(user, server.template), get_encoding().encode_ordinary(answer))
    tokens, _ = history.with_prompt(prompt_tokens(contents[-1], server.template))
    if not tokens:
        raise RequestError("messages[0].content is empty: a model without the template needs a prompt",
                           "messages[0].content")
    _fits(server, [tokens], "messages", "the conversation in messages")
    return [tokens], *options


class Handler(BaseHTTPRequestHandler):
    """One connection: JSON requests and answers, or a stream of Server-Sent Events."""
    server: Server
    protocol_version = "HTTP/1.1"  # keep-alive; a stream ends by closing the connection
    server_version = "minigpt2"
    timeout = 600  # an idle connection is closed after 10 minutes

    def log_message(self, format: str, *args) -> None:
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        path = unquote(urlsplit(self.path).path).rstrip("/")
        if path == "/v1/models":
            self._json(200, {"object": "list", "data": [self.server.card()]})
        elif path == f"/v1/models/{self.server.name}":
            self._json(200, self.server.card())
        elif path.startswith("/v1/models/"):
            self._error(RequestError(f"the model {path.removeprefix('/v1/models/')!r} does not exist: this server "
                                     f"serves {self.server.name!r}", "model", 404, "model_not_found"))
        elif path in ("/v1/completions", "/v1/chat/completions"):
            self._error(RequestError(f"{path} takes POST, not {self.command}", None, 405))
        else:
            self._error(RequestError(f"unknown URL ({self.command} {path or '/'})", None, 404))

    do_HEAD = do_GET  # GET's status and headers, without the body (_json)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path.rstrip("/")
        try:
            route = {"/v1/completions": completion_request, "/v1/chat/completions": chat_request}.get(path)
            if route is None:
                self.close_connection = True  # the body is not read
                raise RequestError(f"unknown URL (POST {path or '/'})" if path != "/v1/models" else
                                   "/v1/models takes GET, not POST", None, 404 if path != "/v1/models" else 405)
            rows, options, stops, streamed, usage = route(self.server, self._body())
        except RequestError as e:
            return self._error(e)
        chat = route is chat_request
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.server.name}
        choices = [Choice(stops) for _ in rows]
        events = self.server.generation(rows, options, choices)
        try:
            if streamed:
                self._stream(head, events, choices, chat, sum(map(len, rows)) if usage else None)
            else:
                self._answer(head, events, choices, chat, sum(map(len, rows)))
        except Exception as e:  # not the request's fault: a 500 naming it, the traceback on stderr
            if streamed or isinstance(e, OSError):
                raise
            traceback.print_exc()
            self._error(RequestError(f"generation failed: {type(e).__name__}: {e}", None, 500, kind="server_error"))
        finally:
            events.close()  # a client gone mid-stream: the generation stops, the lock is released

    def _other_method(self) -> None:
        self.close_connection = True  # a body, if any, is not read
        self._error(RequestError(f"{self.command} is not supported: GET /v1/models, POST /v1/completions or "
                                 "/v1/chat/completions", None, 405))

    do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _other_method

    def _answer(self, head: dict, events, choices: list[Choice], chat: bool, prompt_tokens: int) -> None:
        texts, finish = [""] * len(choices), [None] * len(choices)
        for step in events:
            if self._gone():  # the generation stops (events closed), the queued requests go on
                self.close_connection = True
                return
            for i, piece, reason in step:
                texts[i] += piece
                finish[i] = reason or finish[i]
        if chat:
            answers = [{"index": 0, "message": {"role": "assistant", "content": texts[0]}, "logprobs": None,
                        "finish_reason": finish[0]}]
        else:
            answers = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                       for i, (text, reason) in enumerate(zip(texts, finish))]
        completion = sum(choice.tokens for choice in choices)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion}
        self._json(200, {**head, "choices": answers, "usage": usage})

    def _stream(self, head: dict, events, choices: list[Choice], chat: bool, prompt_tokens: int | None) -> None:
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        extra = {} if prompt_tokens is None else {"usage": None}

        def chunk(i: int, piece: str | None, reason: str | None) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if piece is None else {"content": piece} if piece else {}
                choice = {"index": i, "delta": delta}
            else:
                choice = {"index": i, "text": piece or ""}
            return {**head, "choices": [{**choice, "logprobs": None, "finish_reason": reason}], **extra}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            if chat:
                self._event(chunk(0, None, None))  # the role first, as OpenAI's first chunk
            for step in events:
                for i, piece, reason in step:
                    if piece:
                        self._event(chunk(i, piece, None))
                    if reason:
                        self._event(chunk(i, "", reason))
            if prompt_tokens is not None:
                completion = sum(choice.tokens for choice in choices)
                self._event({**head, "choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens":
                                                              completion, "total_tokens": prompt_tokens + completion}})
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:  # the client went away: stop generating for it
            pass
        except Exception as e:  # the headers are sent: the error as the stream's last event, as OpenAI's
            traceback.print_exc()
            error = RequestError(f"generation failed: {type(e).__name__}: {e}", None, 500, kind="server_error")
            try:
                self._event(error.body())
            except OSError:
                pass

    def _gone(self) -> bool:
        """Whether the client closed the connection (an answer not streamed writes nothing until it is whole)."""
        if not select.select([self.connection], [], [], 0)[0]:
            return False
        try:
            return not self.connection.recv(1, socket.MSG_PEEK)  # EOF; the next request on the connection is not
        except OSError:
            return True

    def _event(self, data: dict) -> None:
        self.wfile.write(b"data: " + _encode(data) + b"\n\n")

    def _body(self) -> dict:
        """The request's JSON object; a RequestError for anything else."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError("a chunked request body is not supported: send Content-Length", None, 411)
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            raise RequestError(f"the request body must be a JSON object of at most {MAX_BODY} bytes "
                               f"(Content-Length {self.headers.get('Content-Length')})", None,
                               413 if length > 0 else 400)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise RequestError(f"the request body is not JSON: {e}" if raw.strip() else
                               "the request body is empty: send a JSON object") from None
        if not isinstance(body, dict):
            raise RequestError(f"the request body must be a JSON object, got a {type(body).__name__}")
        return body

    def _json(self, status: int, data: dict) -> None:
        payload = _encode(data)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _error(self, error: RequestError) -> None:
        self._json(error.status, error.body())


def _encode(data: dict) -> bytes:
    """JSON as UTF-8; a lone surrogate (a request's `"\\ud83d"`, quoted in an error) as its JSON escape."""
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "backslashreplace")


def parse_args(argv: list[str] | None) -> ServeConfig:
    description = ServeConfig.__doc__.rstrip(".") + " (docs/inference.md)."
    parser = cli.build_parser(ServeConfig, "python -m gpt serve", description)
    config = ServeConfig(**vars(parser.parse_args(argv)))
    if config.ckpt is None:
        parser.error("--ckpt is required: a checkpoint folder or a run folder")
    return config


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> NoReturn:

    config = parse_args(argv)
    if config.max_tokens_limit is not None and config.max_tokens_limit < 1:
        raise SystemExit(f"serve: --max-tokens-limit must be at least 1, got {config.max_tokens_limit}")
    if not 0 <= config.port <= 65535:
        raise SystemExit(f"serve: --port must be from 0 to 65535, got {config.port}")
    name = config.model_name or Path(config.ckpt).resolve().name
    model = load_for(config, "serve")  # config.ckpt becomes the checkpoint folder a run folder stands for
    template = template_for(config, "serve")
    try:
        server = Server((config.host, config.port), model, name, template, config.max_tokens_limit)
    except OSError as e:
        raise SystemExit(f"serve: cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    print(f"serving {name} ({config.ckpt}, {'Alpaca template' if template else 'no chat template'}) at "
          f"http://{host}:{port}/v1; Ctrl-C stops it", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl-C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("serve: stopped", flush=True)
    finally:
        server.server_close()
    # not the interpreter's exit: it would end a generation's thread inside torch, which aborts the process
    # ("terminate called without an active exception", status 134); the open connections close with it
    sys.stderr.flush()
    os._exit(0)
