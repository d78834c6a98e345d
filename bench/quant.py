"""The weight type: SmolLM2's Q4_1 GGUF against Q8_0 and Q4_0 copies made by `tskd-lite requantize`, scored by the
same batched path. On a CPU it is the type, not batching, that sets the prompt-processing rate: llama.cpp has
batched matrix kernels for Q4_0 and Q8_0 but none for Q4_1."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from common import SMOLLM2, row, timed
from score import prompt_processing

from tskd_lite.backends import open_backend
from tskd_lite.quantize import requantize
from tskd_lite.recipe import ModelSpec


def run(pairs: list[tuple[str, str]]) -> list[dict]:
    rows, reference, base = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("q4_1", "q8_0", "q4_0"):
            path = SMOLLM2 if kind == "q4_1" else requantize(SMOLLM2, Path(tmp) / f"smollm2-{kind}.gguf", kind)
            engine = open_backend(ModelSpec(model=path, n_ctx=512), role="teacher", parallel=8)
            ids = [(engine.tokenize_prompt(engine.render(p)), engine.tokenize_answer(a)) for p, a in pairs]
            tokens = sum(len(p) + len(a) for p, a in ids)
            scores, seconds = timed(engine.score, ids)
            n_long, t_long = prompt_processing(engine, ids)
            name = "the bundled Q4_1 file" if kind == "q4_1" else f"a {kind.upper()} copy"
            if reference is None:
                reference, base, note = scores, tokens / seconds, "the reference"
            else:
                diff = np.concatenate([np.abs(a - b) for a, b in zip(reference, scores, strict=True)])
                note = f"mean |Δ log p| vs Q4_1 {diff.mean():.3f} (max {diff.max():.2f})"
            rows.append(row("weights", f"tskd-lite scoring, {name}", tokens, seconds, base, note))
            rows.append(row("weights", f"prompt processing, {name}", n_long, t_long, base, "one long sequence"))
            engine.close()
    return rows
