"""Scoring through a served backend against a bare HTTP loop on the same vLLM server, at 1, 8 and 32 in flight.

The bare loop is the least a client can do: the same pairs as text, `parallel` prompts per /v1/completions request
with prompt_logprobs, `parallel` requests in flight, the JSON decoded and nothing checked. tskd-lite's vllm backend
does what the pipeline does: /tokenize for every prompt and answer, token-id prompts, every response checked. The
ratio is the client's cost. In-process llama.cpp on the bundled GGUF sits beside it (other weights: vLLM serves the
fp32 copy of the same model). Needs .venv-vllm (`just setup-vllm`); `just bench` adds these rows where it exists.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import PROMPTS, ROOT, SMOLLM2, row, timed
from servers import vllm_server

from tskd_lite.backends import open_backend
from tskd_lite.recipe import ModelSpec, Target
from tskd_lite.target import hf_dir

VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
NAME = "smollm2"
IN_FLIGHT = (1, 8, 32)
REPEATS = 2  # the faster of two timings per row: the machine's other work shows as noise, not as the client's cost
ANSWERS = ("Yes.", "I am not sure about that.", "The answer is given in the question itself, as it says.")


def available() -> bool:
    return VLLM_PYTHON.is_file()


def _bare(url: str, texts: list[str], parallel: int) -> int:
    """The prompt tokens scored: texts in requests of `parallel`, `parallel` requests in flight, nothing checked."""

    def post(group: list[str]) -> int:
        body = {"model": NAME, "prompt": group, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}
        req = urllib.request.Request(
            url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=600) as r:
            return sum(len(c["prompt_logprobs"]) for c in json.load(r)["choices"])

    groups = [texts[i : i + parallel] for i in range(0, len(texts), parallel)]
    with ThreadPoolExecutor(parallel) as pool:
        return sum(pool.map(post, groups))


def _best(fn, *args) -> tuple[object, float]:
    runs = [timed(fn, *args) for _ in range(REPEATS)]
    return runs[0][0], min(seconds for _, seconds in runs)


def run() -> list[dict]:
    model_dir = hf_dir(Target(model=SMOLLM2), log=lambda _: None)  # the fp32 safetensors copy of the GGUF
    local = open_backend(ModelSpec(model=SMOLLM2, n_ctx=512), role="teacher", parallel=8)
    pairs = [(local.render(p), a) for p in PROMPTS for a in ANSWERS]
    scored, t_local = _best(local.score_answers, pairs)
    n_local = sum(s.n_tokens for s in scored)
    local.close()
    with tempfile.TemporaryDirectory(prefix="bench-served-") as scratch:
        server = vllm_server(VLLM_PYTHON, model_dir, NAME, 512, timeout=900, log=Path(scratch) / "vllm.log")
        try:
            rows = _served_rows(server.url, pairs, server.start_s)
        finally:
            server.stop()
    note = f"{len(pairs)} pairs; Q4_1 GGUF (vLLM: its fp32 copy)"
    return [row("served score", "in-process llama.cpp, 8 per batch (tskd-lite)", n_local, t_local, None, note), *rows]


def _served_rows(url: str, pairs: list[tuple[str, str]], start_s: float) -> list[dict]:
    texts = [r + a for r, a in pairs]
    _bare(url, texts[:8], 8)  # warm-up: the first requests compile and allocate
    rows = []
    for parallel in IN_FLIGHT:
        tokens, t_bare = _best(_bare, url, texts, parallel)
        spec = ModelSpec(model=SMOLLM2, backend="vllm", url=url, served_model=NAME, n_ctx=512)
        client = open_backend(spec, role="teacher", parallel=parallel)
        scored, t_client = _best(client.score_answers, pairs)
        client.close()
        sent = sum(s.n_tokens for s in scored)  # ids tokenized apart (prompt, answer) may differ from the text's
        note = f"{parallel} prompts a request" + (f"; server up {start_s:.0f} s after start" if parallel == 1 else "")
        bare = row("served score", f"vLLM, bare HTTP loop, {parallel} in flight", tokens, t_bare, None, note)
        client_row = row(
            "served score",
            f'vLLM, tskd-lite backend = "vllm", parallel = {parallel}',
            sent,
            t_client,
            bare["tokens_per_s"],
            "ratio: of the bare loop above; /tokenize per prompt and answer, every response checked",
        )
        rows += [bare, client_row]
    return rows


def main() -> None:
    if not available():
        raise SystemExit(f"no {VLLM_PYTHON}: run `just setup-vllm` first")
    lines = ["| path | tokens | seconds | tokens/s | ratio | note |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in run():
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['path']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | {ratio} | {r['note']} |")
    table = "\n".join(lines)
    out = ROOT / "bench" / "results-served.md"
    out.write_text(f"Written by `just bench-served` (`python bench/served.py`, {os.cpu_count()} cores).\n\n{table}\n")
    print(f"{table}\n\nwritten to {out}")


if __name__ == "__main__":
    main()
