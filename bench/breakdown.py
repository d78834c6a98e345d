"""Where the time goes: `python bench/breakdown.py` profiles tskd-lite's scoring (SmolLM2, llama.cpp) and one
training step (Gemma 3 270M, fp32 LoRA on the CPU), and measures this machine's matrix-multiply rate in fp32
(the ceiling the training step runs against) and in bf16."""

from __future__ import annotations

import cProfile
import inspect
import pstats
import time
from collections import defaultdict

import torch
from common import GEMMA3, PROMPTS, SMOLLM2
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tskd_lite.backends import open_backend
from tskd_lite.recipe import ModelSpec, Target
from tskd_lite.target import Formatter, hf_dir
from tskd_lite.train import Example, answer_loss


def scoring() -> list[tuple[str, float]]:
    engine = open_backend(ModelSpec(model=SMOLLM2, n_ctx=512), role="teacher", parallel=8)
    rendered = [engine.render(p) for p in PROMPTS[:16]]
    gens = engine.generate(rendered, max_tokens=64, temperature=0.0, top_p=1.0, seeds=[0] * 16)
    ids = [(engine.tokenize_prompt(r), engine.tokenize_answer(g.text)) for r, g in zip(rendered, gens, strict=True)]
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(engine.score, ids)
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats
    here = inspect.getsourcefile(type(engine))  # the backend's own _decode: llama.cpp's decode and nothing else
    decode = sum(v[3] for (file, _, name), v in stats.items() if (file, name) == (here, "_decode"))
    return [
        ("scoring: inside llama.cpp's decode", decode / total),
        ("scoring: everything else (Python, numpy log-softmax)", 1 - decode / total),
    ]


def training_step() -> list[tuple[str, float]]:
    target_dir = hf_dir(Target(model=GEMMA3), log=lambda _: None)
    tok = AutoTokenizer.from_pretrained(target_dir)
    fmt = Formatter.for_target(tok, Target(model=GEMMA3))
    examples = [Example(*fmt.encode(p, p, 192)) for p in PROMPTS[:8]]
    model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    answer_loss(model, examples, tok.pad_token_id, "cpu")[0].backward()  # warm-up
    vocab = model.config.vocab_size
    with torch.profiler.profile(record_shapes=True) as prof:
        answer_loss(model, examples, tok.pad_token_id, "cpu")[0].backward()
    parts: dict[str, float] = defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        shapes = str(event.input_shapes)
        if event.key.startswith(("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::bmm")):
            part = "output layer matmuls (262k vocabulary)" if str(vocab) in shapes else "other matmuls (body, LoRA)"
        elif "softmax" in event.key or "nll" in event.key or "cross_entropy" in event.key:
            part = "log-softmax and loss" if str(vocab) in shapes else "attention softmax"
        elif "attention" in event.key:
            part = "attention kernels"
        else:
            part = "everything else"
        parts[part] += event.self_cpu_time_total
    total = sum(parts.values())
    return [(f"training step: {k}", v / total) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])]


def matmul_rate(dtype: torch.dtype, rows: int) -> float:
    a, b = torch.randn(rows, 640, dtype=dtype), torch.randn(640, 32768, dtype=dtype)
    a @ b
    start, n = time.perf_counter(), 3
    for _ in range(n):
        a @ b
    return 2 * rows * 640 * 32768 * n / (time.perf_counter() - start) / 1e9


def main() -> None:
    for name, share in scoring() + training_step():
        print(f"{share:6.1%}  {name}")
    # bf16 autocast pays only where the CPU has bf16 instructions; without them it is emulated, hence fewer rows
    for dtype, rows in ((torch.float32, 512), (torch.bfloat16, 8)):
        print(f"{str(dtype)[6:]} matrix multiply on this machine: {matmul_rate(dtype, rows):.1f} GFLOP/s")


if __name__ == "__main__":
    main()
