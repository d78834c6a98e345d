"""Generation: 8 sequences decoded together in one batch against one sequence at a time (SmolLM2, greedy)."""

from __future__ import annotations

from common import PROMPTS, SMOLLM2, row, timed

from tskd_lite.backends import open_backend
from tskd_lite.recipe import ModelSpec

MAX_TOKENS = 64


def run(n_prompts: int = 16) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows for the table, and the (prompt, answer) pairs generated, which the scoring stage reuses."""
    prompts = PROMPTS[:n_prompts]
    rows, texts = [], {}
    for parallel in (1, 8):
        engine = open_backend(ModelSpec(model=SMOLLM2, n_ctx=512), role="teacher", parallel=parallel)
        rendered = [engine.render(p) for p in prompts]
        gens, seconds = timed(
            engine.generate, rendered, max_tokens=MAX_TOKENS, temperature=0.0, top_p=1.0, seeds=[0] * len(rendered)
        )
        tokens = sum(g.n_tokens for g in gens)
        baseline = rows[0]["tokens_per_s"] if rows else None
        name = "one sequence at a time (llama.cpp)" if parallel == 1 else f"{parallel} sequences per batch (tskd-lite)"
        note = f"{len(prompts)} prompts, <= {MAX_TOKENS} tokens; {engine.decoded} tokens decoded, prompts included"
        rows.append(row("generate", name, tokens, seconds, baseline, note))
        texts[parallel] = [g.text for g in gens]
        engine.close()
    same = sum(a == b for a, b in zip(texts[1], texts[8], strict=True))
    rows[-1]["note"] += f"; {same}/{len(prompts)} replies identical to one-at-a-time"
    return rows, list(zip(prompts, texts[8], strict=True))
