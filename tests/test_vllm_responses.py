"""backend = "vllm" checks every scoring response against the ids it sent: a fake server on 127.0.0.1 answers
with what a broken or different server could, and each is one line naming url and model (the real vLLM runs in
tests/test_vllm.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tskd_lite.backends import open_backend
from tskd_lite.errors import TskdError
from tskd_lite.recipe import ModelSpec

VOCAB = {c: i + 10 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ?.")}
TEXT = {i: c for c, i in VOCAB.items()}


class Fake(BaseHTTPRequestHandler):
    """A vLLM-like server: characters are tokens, the BOS is id 1, log p of token id t is -t / 100."""

    fault = ""  # "ids": the server reports other prompt ids; "entry": an answer token's entry lacks its id
    requests: list = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"data": [{"id": "m", "max_model_len": 512}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Fake.requests.append((self.path, body))
        if self.path == "/tokenize":
            ids = ([1] if body["add_special_tokens"] else []) + [VOCAB[c] for c in body["prompt"]]
            return self._send({"tokens": ids, "count": len(ids)})
        choices = []
        for i, ids in enumerate(body["prompt"]):
            entries = [None] + [
                {str(t): {"logprob": -t / 100, "rank": 1, "decoded_token": TEXT.get(t, "")}} for t in ids[1:]
            ]
            if Fake.fault == "text":
                entries[-1][str(ids[-1])]["decoded_token"] = "zz"
            if Fake.fault == "entry":
                entries[-1] = {"999": {"logprob": -1.0}}
            sent = [*ids[:-1], 2] if Fake.fault == "ids" else ids
            index = "0" if Fake.fault == "index" else i
            choices.append({"index": index, "text": "a", "prompt_token_ids": sent, "prompt_logprobs": entries})
        self._send({"choices": choices[::-1], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


@pytest.fixture(params=[16])
def served(request):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Fake.fault, Fake.requests = "", []
    spec = ModelSpec(
        backend="vllm",
        url=f"http://127.0.0.1:{server.server_port}",
        served_model="m",
        chat_template="{% for m in messages %}{{ m['content'] }}?{% endfor %}",
    )
    backend = open_backend(spec, role="teacher", parallel=request.param)
    yield backend, spec.url
    backend.close()
    server.shutdown()
    server.server_close()


def test_answer_log_probs_are_read_at_the_ids_sent_in_batches(served):
    backend, _ = served
    pairs = [(f"q{c}", f"{c}b c") for c in "abcdefghijklmnopqrstu"]  # 21 pairs: requests of 16 and 5 prompts
    got = backend.score_answers(pairs)  # the fake answers each request's choices in reverse order, indexed
    for (_, answer), s in zip(pairs, got, strict=True):
        assert np.allclose(s.logprobs, -np.array([VOCAB[c] for c in answer]) / 100)
        assert s.n_tokens == 1 + 2 + 4  # BOS + prompt + answer
    sizes = [len(b["prompt"]) for path, b in Fake.requests if path == "/v1/completions"]
    assert sorted(sizes) == [5, 16] and all(b.get("prompt_logprobs") == 0 for p, b in Fake.requests if "compl" in p)
    assert backend.count_answer_tokens("ab c") == 4 and backend.count_prompt_tokens("ab") == 3
    # byte ends from the entries' token texts, on the same ids
    [scored] = backend.score_answers([("qa", "ab c")], byte_ends=True)
    assert scored.byte_ends == [1, 2, 3, 4] and np.allclose(scored.logprobs, -np.array([10, 11, 36, 12]) / 100)


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("ids", "prompt token ids are not the ids sent"),
        ("entry", "has no log-prob at its own id"),
        ("index", "expected choices indexed 0 to 0"),
        ("text", "texts do not spell the answer sent"),
    ],
)
def test_a_response_that_does_not_match_what_was_sent_is_one_line(served, fault, says):
    backend, url = served
    Fake.fault = fault
    with pytest.raises(TskdError, match=says) as e:
        backend.score_answers([("qa", "ab")], byte_ends=fault == "text")
    assert "\n" not in str(e.value) and url in str(e.value) and "'m'" in str(e.value)


@pytest.mark.parametrize("served", [1], indirect=True)
def test_parallel_1_sends_one_prompt_per_request(served):
    """What vLLM's CPU build needs with LoRA enabled (a batch of prompts with prompt log-probs crashes it)."""
    backend, _ = served
    got = backend.score_answers([("qa", "ab"), ("qb", "ba")])
    assert [s.logprobs.tolist() for s in got] == [[-0.1, -0.11], [-0.11, -0.1]]
    assert [len(b["prompt"]) for p, b in Fake.requests if p == "/v1/completions"] == [1, 1]
