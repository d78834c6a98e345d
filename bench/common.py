"""What the stage benchmarks share: the bundled models, a fixed workload, timing."""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
PROMPTS = [json.loads(line)["prompt"] for line in (ROOT / "bench" / "prompts.jsonl").read_text().splitlines()]


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def row(stage: str, path: str, tokens: int, seconds: float, baseline: float | None = None, note: str = "") -> dict:
    rate = tokens / seconds
    return {
        "stage": stage,
        "path": path,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(rate, 1),
        "ratio": round(rate / baseline, 2) if baseline else None,
        "note": note,
    }
