"""What training leaves in its folder: the marker that makes the folder training's, the PEFT adapter, the merged
model, for a GGUF target the GGUF LoRA (checked against the merged model in llama.cpp), and train.json last.

Outputs are written beside the old ones as .part and renamed into place after train.json, the done-marker, is
removed; the new train.json comes last. A kill at any moment leaves either the old outputs under their marker, or
no marker (so the next run trains again, from the checkpoint), never a marker over mixed outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tskd_lite import atomic
from tskd_lite.errors import TskdError
from tskd_lite.recipe import Target
from tskd_lite.target import Formatter, answer_logprobs
from tskd_lite.train.replay import REPLAY_FILE

# What train() writes in its folder; a folder holding any of them without the marker is someone else's.
_OUTPUT_NAMES = (
    "train.json",
    "adapter",
    "merged",
    "adapter.gguf",
    "checkpoint",
    "checkpoint.tmp",
    "checkpoint.old",
    REPLAY_FILE,
)
_MARKER = ".tskd-train"


def claim_out(out: Path, where: str) -> None:
    """Make out a training folder of tskd-lite's (a marker file), unless it holds files of the names training
    writes that no tskd-lite training wrote: those are refused with one line naming `where`, never replaced."""
    if (out / _MARKER).is_file():
        return
    if os.path.lexists(out) and not out.is_dir():
        raise TskdError(f"{where}: {out} exists and is not a folder")
    found = [name for name in _OUTPUT_NAMES if os.path.lexists(out / name)]
    if found and not _legacy_ours(out):
        raise TskdError(f"{where}: {out / found[0]} exists and no tskd-lite training wrote it; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).touch()


def _legacy_ours(out: Path) -> bool:
    """A folder trained before the marker existed: its train.json carries the fingerprint only training writes."""
    try:
        return "fingerprint" in json.loads((out / "train.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    mode: str
    device: str
    template: str
    n_train: int
    n_val: int
    steps: int
    best_step: int | None  # the step whose adapter was kept, where early stopping chose one
    answer_tokens: int
    seconds: float
    tokens_per_s: float
    curve: list[dict]
    gguf_adapter: Path | None
    gguf_check: dict | None
    n_replay: int = 0  # of n_train + n_val, the target's own replayed answers (replay.py); absent before replay
    processes: int = 1  # one per device under torchrun or accelerate launch (dist.py); absent before them

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def publish(
    out: Path, target: Target, target_dir: Path, model, fmt: Formatter, pairs: list, fields: dict, fingerprint: str, log
) -> TrainResult:
    """Write the trained model's outputs into out (the module's docstring says in which order, and why) and
    train.json with `fields` (TrainResult's, less the folder and the GGUF adapter's) and the fingerprint."""
    (out / "train.json").unlink(missing_ok=True)
    adapter_part = out / "adapter.part"
    shutil.rmtree(adapter_part, ignore_errors=True)
    model.save_pretrained(adapter_part)
    merged_part = _merge(target_dir, adapter_part, out / "merged.part", fmt.tokenizer)
    gguf_adapter, gguf_check = None, None
    if not target.model.is_dir():
        gguf_adapter, gguf_check = _gguf_adapter(out, model, target.model, target_dir, merged_part, fmt, pairs, log)
    for part, final in ((adapter_part, out / "adapter"), (merged_part, out / "merged")):
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
    result = TrainResult(out_dir=out, **fields, gguf_adapter=gguf_adapter, gguf_check=gguf_check)
    atomic.write_text(out / "train.json", json.dumps(result.to_json() | {"fingerprint": fingerprint}, indent=2))
    return result


def _merge(target_dir: Path, adapter_dir: Path, merged_dir: Path, tokenizer) -> Path:
    """Base weights in fp32 plus the adapter, merged and saved as plain safetensors."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    return merged_dir


def _gguf_adapter(
    out: Path, model, target_gguf: Path, target_dir: Path, merged_part: Path, fmt: Formatter, pairs: list, log
) -> tuple[Path, dict]:
    """out/adapter.gguf, the LoRA for llama.cpp, once its log-probs on the first pairs match the merged model's."""
    from tskd_lite import lora_gguf

    gguf_adapter = out / "adapter.gguf"
    gguf_part = out / "adapter.gguf.part"
    lora_gguf.write(model, gguf_part, lora_gguf.gguf_arch(model.get_base_model().config, target_gguf))
    gguf_check = check_gguf_adapter(target_gguf, gguf_part, target_dir, merged_part, fmt, [p[:2] for p in pairs[:3]])
    gguf_part.replace(gguf_adapter)
    log(check_line(gguf_check, "merged model"))
    return gguf_adapter, gguf_check


def check_line(check: dict, what: str) -> str:
    """A GGUF LoRA check's figures on one line (training's log, `tskd-lite convert`); what: the transformers side."""
    return (
        f"GGUF LoRA in llama.cpp vs {what} in transformers: mean |Δ log p| {check['mean_abs_diff']:.4f}"
        f" (max {check['max_abs_diff']:.4f}) over {check['tokens']} tokens; without the adapter "
        f"{check['base_mean_abs_diff']:.4f} (max {check['base_max_abs_diff']:.4f})"
    )


def check_gguf_adapter(
    target_gguf: Path, adapter: Path, target_dir: Path, merged_dir: Path, fmt: Formatter, pairs: list[tuple[str, str]]
) -> dict:
    """compare_gguf_adapter against the merged model and the target, each loaded from its folder in turn."""
    import torch
    from transformers import AutoModelForCausalLM

    def load(folder: Path):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True).eval()

    return compare_gguf_adapter(
        target_gguf, adapter, fmt, pairs, adapted=lambda: load(merged_dir), plain=lambda: load(target_dir)
    )


def compare_gguf_adapter(
    target_gguf: Path, adapter: Path, fmt: Formatter, pairs: list[tuple[str, str]], *, adapted, plain
) -> dict:
    """Log-probs of a few answers in llama.cpp (the GGUF + the GGUF LoRA) against transformers with the adapter
    (adapted()), on the same token ids; and, as the yardstick, the same comparison without it (plain(), called
    second, so that one model at a time is in memory): on a quantized GGUF the two runtimes already disagree by the
    quantization, and the adapter should add nothing beyond it."""
    from tskd_lite.backends import open_backend  # the llama_cpp backend: this check scores token ids
    from tskd_lite.recipe import ModelSpec

    ids = []
    for prompt, answer in pairs:
        ids.append((fmt.prompt_ids(prompt), fmt.tokenizer(answer, add_special_tokens=False)["input_ids"][:64]))

    def disagreement(lora: Path | None, model) -> np.ndarray:
        engine = open_backend(ModelSpec(model=target_gguf, lora=lora, n_ctx=512), role="target")
        diffs = []
        for head, tail in ids:
            diffs.append(np.abs(engine.score([(head, tail)])[0] - answer_logprobs(model, head, tail)))
        engine.close()
        return np.concatenate(diffs)

    with_lora = disagreement(adapter, adapted())
    without = disagreement(None, plain())
    return {
        "max_abs_diff": float(with_lora.max()),
        "mean_abs_diff": float(with_lora.mean()),
        "tokens": int(with_lora.size),
        "base_max_abs_diff": float(without.max()),
        "base_mean_abs_diff": float(without.mean()),
    }
