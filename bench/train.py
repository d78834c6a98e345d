"""Training the target (Gemma 3 270M, LoRA r16 on all linear layers, CPU fp32): plain transformers + peft,
one padded example per row and logits at every position, against tskd-lite's packed rows and answer-only
logits. Same batches, same initial weights; the loss curves must agree since both compute the same loss."""

from __future__ import annotations

import torch
from common import GEMMA3, row
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from tskd_lite.recipe import Target
from tskd_lite.target import Formatter, hf_dir
from tskd_lite.train import Example, answer_loss, collate, pack


def _plain_loss(model, batch, pad_id):
    ids, labels, mask = collate(batch, pad_id)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def run(pairs: list[tuple[str, str]], steps: int = 4, batch_size: int = 8) -> list[dict]:
    import time

    target_dir = hf_dir(Target(model=GEMMA3), log=lambda _: None)
    tok = AutoTokenizer.from_pretrained(target_dir)
    fmt = Formatter.for_target(tok, Target(model=GEMMA3))
    examples = [Example(*fmt.encode(p, a, 192)) for p, a in pairs]
    batches = [examples[(i * batch_size) % len(examples) :][:batch_size] for i in range(steps + 1)]
    pad = tok.pad_token_id
    results = {}
    lean = lambda m, b, p: answer_loss(m, b, p, "cpu")[0]  # noqa: E731
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    for name, loss_fn, quant in (("plain", _plain_loss, None), ("lean", lean, None), ("nf4", lean, nf4)):
        torch.manual_seed(0)
        kwargs = {"quantization_config": quant, "device_map": {"": "cpu"}} if quant else {}
        model = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32, **kwargs)
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        )
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
        losses, seconds, tokens = [], 0.0, 0
        for i, batch in enumerate(batches):
            start = time.perf_counter()
            loss = loss_fn(model, batch, pad)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if i > 0:  # the first step warms caches and allocators up; it is not timed
                seconds += time.perf_counter() - start
                tokens += sum(len(e.ids) for e in batch)
            losses.append(loss.item())
        results[name] = (tokens, seconds, losses)
    diff = max(abs(a - b) for a, b in zip(results["plain"][2], results["lean"][2], strict=True))
    base = results["plain"][0] / results["plain"][1]
    note = f"{steps} timed steps of batch {batch_size}"
    real = sum(len(e.ids) for b in batches[1:] for e in b)
    padded = sum(collate(b, pad)[0].numel() for b in batches[1:])
    packed = sum(pack(b, pad)[0].numel() for b in batches[1:])
    return [
        row(
            "train",
            "transformers + peft, padded rows, logits everywhere",
            *results["plain"][:2],
            None,
            f"{note}; {padded} positions for {real} tokens",
        ),
        row(
            "train",
            "packed rows, answer-only logits (tskd-lite)",
            *results["lean"][:2],
            base,
            f"{packed} positions; loss after each step equal to plain within {diff:.1e}; "
            f"last {results['lean'][2][-1]:.4f}",
        ),
        row(
            "train",
            "packed, answer-only, NF4 QLoRA (bitsandbytes CPU backend)",
            *results["nf4"][:2],
            base,
            f"last loss {results['nf4'][2][-1]:.4f} (4-bit weights)",
        ),
    ]
