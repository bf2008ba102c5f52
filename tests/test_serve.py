"""The OpenAI-compatible server (`python -m gpt serve`): a tiny checkpoint served on 127.0.0.1, called over HTTP as
a client would: completions equal `generate`'s, chat renders the conversation as `make chat` does, streams equal
answers, stop strings, errors, concurrent requests, a client gone mid-stream, Ctrl-C."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from gpt import EOT, GPT, generate, get_encoding, load_model, save_model, tokenize_batch_input
from gpt.inference import pad_batch
from gpt.model import preset
from gpt.serve import Choice, Server, main
from gpt.template import CHAT_TEMPLATE, render_prompt
from train_shards import one_thread  # noqa: F401 (an autouse fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An SFT-like checkpoint (the Alpaca chat template) with a context of 128 tokens; weights scaled up for
    peaked, varied greedy choices."""
    torch.manual_seed(0)
    model = GPT(preset("nano", block_size=128))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return save_model(model.eval(), tmp_path_factory.mktemp("serve") / "tiny-sft", chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


def start(model, template=True, limit=None) -> tuple[Server, str]:
    server = Server(("127.0.0.1", 0), model, "tiny-sft", template, limit)
    server.quiet = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def url(model):
    server, url = start(model)
    yield url
    server.shutdown()
    server.server_close()


def call(url, path, body=None, raw=False):
    """(status, the JSON answer, or the text of a stream with raw)."""
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    return status, text if raw else json.loads(text)


def events(text):
    """The JSON chunks of a Server-Sent Events stream, checked to end with [DONE]."""
    blocks = text.split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""] and all(b.startswith("data: ") for b in blocks[:-1])
    return [json.loads(b.removeprefix("data: ")) for b in blocks[:-2]]


def greedy_text(model, tokens, steps):
    row = generate(model, *pad_batch([tokens]), 0.0, steps)[0]
    return get_encoding().decode(row[:-1] if row and row[-1] == EOT else row), row


def test_models_lists_the_checkpoint(url):
    status, answer = call(url, "/v1/models")
    assert status == 200 and answer["object"] == "list"
    assert [(m["id"], m["object"]) for m in answer["data"]] == [("tiny-sft", "model")]
    assert call(url, "/v1/models/tiny-sft")[1]["id"] == "tiny-sft"


def test_greedy_completions_are_generate_s_tokens_decoded(url, model):
    prompts = ["Hello there, how are", "A", "The quick brown fox jumps over"]
    status, answer = call(url, "/v1/completions", {"model": "tiny-sft", "prompt": prompts, "max_tokens": 20,
                                                    "temperature": 0})
    assert status == 200, answer
    rows = generate(model, *tokenize_batch_input(prompts), 0.0, 20)
    enc = get_encoding()
    assert answer["object"] == "text_completion" and answer["model"] == "tiny-sft" and answer["id"].startswith("cmpl-")
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    for choice, row in zip(answer["choices"], rows):
        ended = row[-1] == EOT
        assert choice["text"] == enc.decode(row[:-1] if ended else row)
        assert choice["finish_reason"] == ("stop" if ended else "length")
    prompt_tokens = sum(len(enc.encode_ordinary(p)) for p in prompts)
    assert answer["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": sum(map(len, rows)),
                               "total_tokens": prompt_tokens + sum(map(len, rows))}
    # one prompt, as a string; max_tokens defaults to OpenAI's 16
    status, one = call(url, "/v1/completions", {"prompt": prompts[0], "temperature": 0})
    assert one["choices"][0]["text"] == enc.decode(generate(model, *tokenize_batch_input(prompts[:1]), 0.0, 16)[0])


def test_the_end_of_the_context_is_length(url, model):
    enc = get_encoding()
    prompt = " ".join(["word"] * 120)
    assert len(enc.encode_ordinary(prompt)) == 120
    status, answer = call(url, "/v1/completions", {"prompt": prompt, "max_tokens": 50, "temperature": 0})
    text, row = greedy_text(model, enc.encode_ordinary(prompt), 50)
    assert status == 200 and answer["choices"][0]["text"] == text and answer["usage"]["completion_tokens"] == len(row)
    assert len(row) <= 8 and answer["choices"][0]["finish_reason"] == ("stop" if row[-1] == EOT else "length")


def test_a_long_prompt_in_a_batch_does_not_cut_the_others(url):
    """A batch shares one context: generated together, a short prompt's choice would end ("length") when the longest
    prompt fills the context, before its max_tokens; each choice is the one its prompt gets alone."""
    prompts = ["Hi", " ".join(["word"] * 120), "Once upon a time"]
    body = {"max_tokens": 50, "temperature": 0}
    status, answer = call(url, "/v1/completions", {"prompt": prompts, **body})
    alone = [call(url, "/v1/completions", {"prompt": prompt, **body})[1] for prompt in prompts]
    assert status == 200 and answer["choices"] == [{**one["choices"][0], "index": i} for i, one in enumerate(alone)]
    assert answer["usage"]["completion_tokens"] == sum(one["usage"]["completion_tokens"] for one in alone) > 100
    status, text = call(url, "/v1/completions", {"prompt": prompts, **body, "stream": True}, raw=True)
    for i, one in enumerate(alone):
        assert "".join(c["choices"][0]["text"] for c in events(text) if c["choices"][0]["index"] == i) == \
            one["choices"][0]["text"]


def test_chat_renders_the_conversation_as_make_chat_does(url, model):
    """Each finished turn is the Alpaca prompt, the answer and EOT (chat.History), then the new prompt: the tokens
    transformers renders from the checkpoint's chat template."""
    enc = get_encoding()
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": " Blue."},
                {"role": "user", "content": "And another one?"}]
    status, answer = call(url, "/v1/chat/completions", {"model": "x", "messages": messages, "max_tokens": 12,
                                                         "temperature": 0})
    assert status == 200, answer
    tokens = (enc.encode_ordinary(render_prompt("Name a colour.")) + enc.encode_ordinary(" Blue.") + [EOT]
              + enc.encode_ordinary(render_prompt("And another one?")))
    text, row = greedy_text(model, tokens, 12)
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                                  "finish_reason": "stop" if row[-1] == EOT else "length"}]
    assert answer["usage"]["prompt_tokens"] == len(tokens) and answer["usage"]["completion_tokens"] == len(row)
    # without max_tokens a chat answers up to the end of the context (OpenAI's default)
    status, answer = call(url, "/v1/chat/completions", {"messages": messages[:1], "temperature": 0})
    text, row = greedy_text(model, enc.encode_ordinary(render_prompt("Name a colour.")), 128)
    assert answer["choices"][0]["message"]["content"] == text
    assert answer["usage"]["total_tokens"] == 128 or row[-1] == EOT


def test_chat_renders_what_the_checkpoint_s_chat_template_renders(url, checkpoint, monkeypatch):
    from transformers import AutoTokenizer

    from gpt import serve

    seen = []
    real = serve.pad_batch
    monkeypatch.setattr(serve, "pad_batch", lambda rows: seen.append(rows) or real(rows))
    messages = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Tell me a joke."}]
    assert call(url, "/v1/chat/completions", {"messages": messages, "max_tokens": 1})[0] == 200
    rendered = AutoTokenizer.from_pretrained(checkpoint).apply_chat_template(messages, tokenize=False)
    assert get_encoding().decode(seen[0][0]) == rendered


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": ["Hello there", "é 日本"], "max_tokens": 24, "temperature": 0}),
    ("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.9, "seed": 7}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 24, "top_p": 0.8,
                              "seed": 3}),
    ("/v1/completions", {"prompt": ["The", "A cat"], "max_tokens": 30, "temperature": 0, "stop": [" the", "e"]})])
def test_streaming_equals_not_streaming(url, path, body):
    chat = path.startswith("/v1/chat")
    status, answer = call(url, path, body)
    assert status == 200, answer
    status, text = call(url, path, {**body, "stream": True, "stream_options": {"include_usage": True}}, raw=True)
    assert status == 200
    chunks = events(text)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == answer["usage"]
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for choice in answer["choices"]:
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == choice["index"]]
        pieces = [c["delta"].get("content", "") if chat else c["text"] for c in mine]
        assert all(pieces[1 if chat else 0:-1]) and pieces[-1] == ""  # a piece per chunk, the last only ends it
        assert "".join(pieces) == (choice["message"]["content"] if chat else choice["text"])
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + [choice["finish_reason"]]


def test_the_same_seed_gives_the_same_text(url):
    body = {"prompt": "Once upon a time", "max_tokens": 20, "temperature": 1.0, "seed": 11}
    first, second = call(url, "/v1/completions", body)[1], call(url, "/v1/completions", body)[1]
    other = call(url, "/v1/completions", {**body, "seed": 12})[1]
    assert first["choices"][0]["text"] == second["choices"][0]["text"] != other["choices"][0]["text"]


def test_stop_strings_cut_the_text_and_finish_with_stop(url, model):
    prompts = ["Hello there, how are", "The quick brown fox jumps over"]
    full = call(url, "/v1/completions", {"prompt": prompts, "max_tokens": 20, "temperature": 0})[1]["choices"]
    texts = [c["text"] for c in full]
    stop = texts[0][5:8]  # three characters from the middle of the first answer
    assert stop and stop not in texts[0][:5]
    status, answer = call(url, "/v1/completions", {"prompt": prompts, "max_tokens": 20, "temperature": 0,
                                                    "stop": [stop, "never appears"]})
    assert status == 200
    first, second = answer["choices"]
    assert first["text"] == texts[0][:texts[0].index(stop)] and first["finish_reason"] == "stop"
    if stop in texts[1]:
        assert second["text"] == texts[1][:texts[1].index(stop)] and second["finish_reason"] == "stop"
    else:
        assert second == full[1]
    # a single string; the token that completed the stop string is counted, not those after it
    status, answer = call(url, "/v1/completions", {"prompt": prompts[0], "max_tokens": 20, "temperature": 0,
                                                    "stop": stop})
    assert answer["choices"][0]["text"] == first["text"] and answer["usage"]["completion_tokens"] < 20


def test_a_stop_string_split_across_tokens_is_held_back_until_it_is_known():
    choice, enc = Choice(["abc", "xyz"]), get_encoding()
    pieces = [choice.add(t) for t in enc.encode_ordinary("hello ab")]
    assert "".join(pieces) == "hello " and choice.finish is None  # "ab" may begin "abc"
    assert choice.add(enc.encode_ordinary("d")[0]) == "abd"  # it did not
    assert choice.add(enc.encode_ordinary("x")[0]) == "" and choice.add(enc.encode_ordinary("yz")[0]) == ""
    assert choice.finish == "stop" and choice.text == "hello abd"
    choice = Choice(["abc"])
    assert "".join(choice.add(t) for t in enc.encode_ordinary(" ab")) == " " and choice.end() == "ab"
    assert choice.finish == "length"
    choice = Choice([])  # a character split across tokens waits for its last byte
    tokens = enc.encode_ordinary("日本")
    assert "".join(choice.add(t) for t in tokens) == "日本" and choice.add(EOT) == "" and choice.finish == "stop"


BAD = [
    ("/v1/completions", {"prompt": "x", "n": 2}, 400, "n"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", {"prompt": "x", "logprobs": 2}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "x", "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", ""]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "10"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "temperature": True}, 400, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {"prompt": "x", "top_k": 0}, 400, "top_k"),
    ("/v1/completions", {"prompt": "x", "seed": "1"}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "seed": 2 ** 64}, 400, "seed"),
    ("/v1/completions", {"prompt": "x", "stop": ""}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", 3]}, 400, "stop"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {"prompt": "x", "model": 3}, 400, "model"),
    ("/v1/completions", {"prompt": "x", "max_token": 3}, 400, "max_token"),
    ("/v1/completions", {"prompt": " ".join(["word"] * 128)}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": ["hi"]}, 400, "messages[0]"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"},
                                           {"role": "user", "content": "Hi"}]}, 400, "messages[1].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "Hello"}]}, 400, "messages[1].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi", "tool_calls": []}]}, 400,
     "messages[0].tool_calls"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}, 400,
     "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": " ".join(["word"] * 100)}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                              "max_completion_tokens": 5}, 400, "max_completion_tokens"),
]


@pytest.mark.parametrize("path, body, status, param", BAD)
def test_bad_requests_are_openai_errors_naming_the_field(url, path, body, status, param):
    got, answer = call(url, path, body)
    assert got == status and set(answer) == {"error"}
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and param.split("[")[0].split(".")[0] in error["message"]


def test_a_prompt_over_the_context_says_so(url):
    got, answer = call(url, "/v1/completions", {"prompt": ["hi", " ".join(["word"] * 130)]})
    assert got == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert answer["error"]["message"].startswith("the prompt 2 of 2 has 130 tokens: this model's context is 128")


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/v1/nothing", None, 404), ("POST", "/v1/nothing", {}, 404), ("GET", "/v1/completions", None, 405),
    ("GET", "/v1/models/gpt-4", None, 404), ("POST", "/v1/completions", b"{not json", 400),
    ("POST", "/v1/completions", b"[1, 2]", 400), ("POST", "/v1/completions", b"", 400),
    ("POST", "/v1/completions", b'{"\\ud83d": 1}', 400)])  # a lone surrogate, quoted in the error: no answer before
def test_unknown_paths_and_bodies_that_are_not_json_objects(url, method, path, body, status):
    got, answer = call(url, path, body if method == "POST" else None)
    assert got == status and set(answer["error"]) == {"message", "type", "param", "code"}


def test_max_tokens_limit(model):
    server, url = start(model, limit=8)
    try:
        got, answer = call(url, "/v1/completions", {"prompt": "Hi", "max_tokens": 9})
        assert got == 400 and answer["error"]["param"] == "max_tokens" and "at most 8" in answer["error"]["message"]
        got, answer = call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                         "temperature": 0})
        assert got == 200 and answer["usage"]["completion_tokens"] <= 8
    finally:
        server.shutdown()
        server.server_close()


def test_a_model_without_the_template_chats_one_plain_message(model):
    server, url = start(model, template=False)
    try:
        got, answer = call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello there"}],
                                                         "max_tokens": 10, "temperature": 0})
        assert got == 200
        assert answer["choices"][0]["message"]["content"] == greedy_text(
            model, get_encoding().encode_ordinary("Hello there"), 10)[0]
        got, answer = call(url, "/v1/chat/completions", {"messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}]})
        assert got == 400 and answer["error"]["param"] == "messages"
        assert "no chat template" in answer["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()


def test_concurrent_requests_queue_and_both_complete(url):
    """Requests sent at once (two of each: a greedy answer, a seeded stream) each get what they get alone."""
    bodies = [{"prompt": "Hello there, how are", "max_tokens": 30, "temperature": 0},
              {"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0.8, "seed": 5, "stream": True}]
    alone = [call(url, "/v1/completions", bodies[0])[1]["choices"],
             events(call(url, "/v1/completions", bodies[1], raw=True)[1])]
    results = {}

    def run(i):
        results[i] = call(url, "/v1/completions", bodies[i % 2], raw=i % 2 == 1)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    for i in (0, 2):
        assert results[i][0] == 200 and results[i][1]["choices"] == alone[0]
    text = "".join(c["choices"][0]["text"] for c in alone[1])
    for i in (1, 3):
        assert results[i][0] == 200 and "".join(c["choices"][0]["text"] for c in events(results[i][1])) == text
    assert text


def test_a_client_gone_mid_stream_does_not_stop_the_server(url, monkeypatch):
    """The generation of a client gone stops at the next piece it cannot send, and the next request is answered."""
    tokens, add = [], Choice.add
    monkeypatch.setattr(Choice, "add", lambda self, token: tokens.append(token) or add(self, token))
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "Hello", "max_tokens": 120, "temperature": 1, "stream": True}).encode()
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert s.recv(64).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset on close
    status, answer = call(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 5, "temperature": 0})
    assert status == 200 and answer["choices"][0]["finish_reason"] in ("length", "stop")
    assert len(tokens) < 3 * 60 + 5  # not the 3 * 120 tokens asked for


def test_a_client_gone_before_its_answer_stops_its_generation(url, monkeypatch):
    """A client that closes its connection while its answer (not streamed) is generated, at a timeout for instance:
    the generation stops, and the requests queued behind it (the client's retries) do not wait for it."""
    tokens, add = [], Choice.add
    monkeypatch.setattr(Choice, "add", lambda self, token: tokens.append(token) or add(self, token))
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "Hello", "max_tokens": 120, "temperature": 0}).encode()  # 120 tokens, no EOT
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
                      + b"\r\n\r\n" + body)
            seen, waited = len(tokens), time.monotonic()
            while len(tokens) == seen and time.monotonic() - waited < 30:  # its generation has begun
                time.sleep(0.001)
    status, answer = call(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 5, "temperature": 0})
    assert status == 200 and answer["usage"]["completion_tokens"] == 5
    assert len(tokens) < 3 * 60 + 5  # not the 3 * 120 tokens asked for


def test_keep_alive_connection_serves_several_requests(url):
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for _ in range(2):
            connection.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "max_tokens": 2}),
                               {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200 and len(json.loads(response.read())["choices"]) == 1
        connection.request("POST", "/v1/completions", json.dumps({"prompt": "Hi", "n": 3}))
        response = connection.getresponse()
        assert response.status == 400 and json.loads(response.read())["error"]["param"] == "n"
        connection.request("GET", "/v1/models")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_head_answers_as_get_without_the_body(url):
    """HEAD (`curl -I`, health checks) gets GET's status and headers, no body, and the connection stays usable."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        for path, status in [("/v1/models", 200), ("/v1/models/tiny-sft/", 200), ("/v1/models/gpt-4", 404),
                             ("/v1/completions", 405)]:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            connection.request("HEAD", path)
            head = connection.getresponse()
            assert (head.status, head.read()) == (status, b"") and response.status == status
            assert head.getheader("Content-Type") == "application/json"
            assert head.getheader("Content-Length") == str(len(body)) or status == 405  # "not HEAD", not "not GET"
        connection.request("GET", "/v1/models")
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_serve_command_loads_the_checkpoint_and_stops_on_ctrl_c(checkpoint):
    """`python -m gpt serve --ckpt DIR --port 0` prints where it serves, answers, and Ctrl-C ends it with status 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpt", "serve", "--ckpt", str(checkpoint), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving tiny-sft ({checkpoint}, Alpaca template) at http://127.0.0.1:"), \
            line + proc.stderr.read()
        url = line.split(" at ")[1].split("/v1")[0]
        status, answer = call(url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}],
                                                             "max_tokens": 3})
        assert status == 200 and answer["model"] == "tiny-sft"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and out == "serve: stopped\n" and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_stops_cleanly_while_a_generation_streams(tmp_path, signum):
    """Ctrl-C or `kill` while a generation runs in another thread: status 0 and "serve: stopped", not the abort of a
    thread ended inside torch by the interpreter's exit ("terminate called without an active exception")."""
    torch.manual_seed(0)
    model = GPT(preset("nano", block_size=1024)).eval()  # 1000 new tokens: the stream lasts a second or more
    checkpoint = save_model(model, tmp_path / "long", chat_template=CHAT_TEMPLATE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gpt", "serve", "--ckpt", str(checkpoint), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        host, port = line.split(" at http://")[1].split("/v1")[0].split(":")
        body = json.dumps({"prompt": "Hello", "max_tokens": 1000, "temperature": 1, "seed": 0, "stream": True}).encode()
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
                      + b"\r\n\r\n" + body)
            received = b""
            while b"data: {" not in received:  # the first piece: the generation runs
                received += s.recv(4096)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (0, "serve: stopped\n") and "terminate called" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("argv, message", [
    ([], "--ckpt is required"), (["--ckpt", "/nonexistent/ckpt"], "serve: "),
    (["--ckpt", "x", "--max-tokens-limit", "0"], "--max-tokens-limit must be at least 1"),
    (["--ckpt", "x", "--port", "80000"], "serve: --port must be from 0 to 65535, got 80000"),
    (["--ckpt", "x", "--port", "-1"], "serve: --port must be from 0 to 65535, got -1")])
def test_serve_command_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert message in str(stopped.value.code) + capsys.readouterr().err


def test_serve_command_says_when_the_port_is_taken(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"^serve: cannot listen on 127.0.0.1:{port}: "):
            main(["--ckpt", str(checkpoint), "--port", str(port)])


def test_a_body_over_the_limit_is_refused_unread(url):
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/v1/completions")
        connection.putheader("Content-Length", str(64 * 2**20))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and "at most 16777216 bytes" in json.loads(response.read())["error"]["message"]
        assert response.getheader("Connection") == "close"
    finally:
        connection.close()
