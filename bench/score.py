"""Scoring (prompt, answer) pairs: tskd-lite's batched answer-only path, one pair at a time through llama.cpp,
transformers fp32 batched, and llama.cpp's prompt-processing rate on one long sequence (the ceiling)."""

from __future__ import annotations

import os

import numpy as np
import torch
from common import SMOLLM2, row, timed

from tskd_lite.backends import open_backend
from tskd_lite.recipe import ModelSpec, Target
from tskd_lite.target import hf_dir


def _transformers_batched(pairs_ids: list[tuple[list[int], list[int]]], batch_size: int = 16) -> None:
    model = torch_model()
    for start in range(0, len(pairs_ids), batch_size):
        chunk = pairs_ids[start : start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.tensor([p + a + [0] * (width - len(p) - len(a)) for p, a in chunk])
        mask = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in chunk])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for k, (p, a) in enumerate(chunk):
            logp[k, len(p) - 1 : len(p) + len(a) - 1].gather(1, torch.tensor(a)[:, None])


_model = None


def torch_model():
    global _model
    if _model is None:
        from transformers import AutoModelForCausalLM

        _model = AutoModelForCausalLM.from_pretrained(
            hf_dir(Target(model=SMOLLM2), log=lambda _: None), dtype=torch.float32
        ).eval()
    return _model


def prompt_processing(engine, ids: list[tuple[list[int], list[int]]]) -> tuple[int, float]:
    """(tokens, seconds) of one ~500-token prompt made of the answers, decoded with logits at its last position
    only: llama.cpp's top rate on this machine, which scoring can approach but not pass per token decoded."""
    text = engine.detokenize([t for _, a in ids for t in a])
    prompt = engine.detokenize(engine.tokenize_prompt(text)[:500])
    _, seconds = timed(engine.generate, [prompt], max_tokens=1, temperature=0.0, top_p=1.0, seeds=[0])
    return len(engine.tokenize_prompt(prompt)), seconds


def run(pairs: list[tuple[str, str]]) -> list[dict]:
    batched = open_backend(ModelSpec(model=SMOLLM2, n_ctx=512), role="teacher", parallel=8)
    single = open_backend(ModelSpec(model=SMOLLM2, n_ctx=512), role="teacher", parallel=1)
    ids = [(batched.tokenize_prompt(batched.render(p)), batched.tokenize_answer(a)) for p, a in pairs]
    tokens = sum(len(p) + len(a) for p, a in ids)
    note = f"{len(ids)} pairs, {tokens} tokens"
    one, t_one = timed(single.score, ids)
    many, t_many = timed(batched.score, ids)
    torch_model()  # load outside the timing
    _, t_torch = timed(_transformers_batched, ids)
    base = tokens / t_one
    diff = max(float(np.abs(a - b).max()) for a, b in zip(one, many, strict=True))
    n_long, t_long = prompt_processing(single, ids)
    rows = [
        row("score", "one pair at a time (llama.cpp)", tokens, t_one, None, note),
        row(
            "score",
            "8 pairs per batch, answer-only logits, shared prefixes (tskd-lite)",
            tokens,
            t_many,
            base,
            f"{batched.decoded} of {tokens} tokens decoded; max |Δ log p| vs one at a time {diff:.3f} "
            "(quantized kernels round differently with batch shape)",
        ),
        row("score", "transformers fp32, batch 16", tokens, t_torch, base, "dequantized weights"),
        row(
            "score",
            "llama.cpp prompt processing, one long sequence (ceiling)",
            n_long,
            t_long,
            base,
            f"{n_long} prompt tokens, logits at the last position only",
        ),
    ]
    batched.close()
    single.close()
    # The thread count is picked by measurement: every core (the engine's default) against each smaller count.
    for threads in range(1, os.cpu_count() or 1):
        engine = open_backend(ModelSpec(model=SMOLLM2, n_ctx=512), role="teacher", threads=threads, parallel=8)
        _, seconds = timed(engine.score, ids)
        rows.append(row("score", f"tskd-lite with {threads} of {os.cpu_count()} threads", tokens, seconds, base))
        engine.close()
    return rows
