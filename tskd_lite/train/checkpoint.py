"""What lets a killed training resume, and a finished one be recognised: the fingerprint of the settings, tokens
and target that a checkpoint or a train.json belongs to, the loop's state (TrainState, saved as state.json), and
the checkpoint folder itself, written atomically every `checkpoint_every` steps.

A checkpoint is taken up again only when its fingerprint is this run's (the dataset and the training settings are
unchanged); otherwise training starts over and says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tskd_lite import atomic
from tskd_lite.recipe import Target, Train
from tskd_lite.train.data import Example
from tskd_lite.train.dist import is_main, main_first
from tskd_lite.train.outputs import TrainResult


@dataclass
class TrainState:
    """The loop's state between steps. A checkpoint holds it as state.json (these fields in this order, best_weights
    aside, then the fingerprint: the format the single-function train() wrote, so that its checkpoints resume here)
    and best.safetensors (best_weights)."""

    step: int = 0  # optimiser steps done
    curve: list[dict] = field(default_factory=list)  # per step: step, loss, lr; at an epoch's end val_loss, epoch
    answer_tokens: int = 0  # tokens that carried the loss so far
    seconds: float = 0.0  # spent in steps (not in loading, validation or checkpoints)
    best: dict | None = None  # early stopping: {"val_loss", "step"} of the lowest held-out loss so far
    stale_epochs: int = 0  # early stopping: epochs since that loss last improved
    best_weights: dict | None = field(default=None, repr=False, compare=False)  # that step's LoRA weights

    @classmethod
    def from_json(cls, saved: dict) -> TrainState:
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})

    def to_json(self, fingerprint: str) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "best_weights"}
        return json.dumps(fields | {"fingerprint": fingerprint})

    def improved(self, val_loss: float) -> bool:
        """Early stopping's bookkeeping at an epoch's end: whether val_loss is the best so far (and so the weights
        to keep), else one more stale epoch."""
        if self.best is None or val_loss < self.best["val_loss"]:
            self.best = {"val_loss": val_loss, "step": self.step}
            self.stale_epochs = 0
            return True
        self.stale_epochs += 1
        return False

    def stopped(self, patience: int) -> bool:
        """Whether early stopping has ended the training: the held-out loss has not improved for `patience`
        epochs (never without patience)."""
        return bool(patience) and self.stale_epochs >= patience

    def summary(self) -> dict:
        """TrainResult's fields that come from the loop."""
        return {
            "steps": self.step,
            "best_step": self.best["step"] if self.best else None,
            "answer_tokens": self.answer_tokens,
            "seconds": self.seconds,
            "tokens_per_s": self.answer_tokens / max(self.seconds, 1e-9),
            "curve": self.curve,
        }


def fingerprint_of(cfg: Train, examples: list[Example], target: Target, target_dir: Path, mode: str) -> str:
    """What a checkpoint and a finished training belong to: settings, tokens, and the target by content."""
    from tskd_lite.gguf_meta import identity

    models = [identity(target.model)]
    # replay's keys act through the examples alone (its pairs are among them): a checkpoint made before they
    # existed, or with another prompts file of the same lines, is still the same training
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("replay", "replay_prompts")}
    digest = hashlib.sha256(json.dumps([settings, str(target_dir), mode, models], default=str).encode())
    for e in examples:
        digest.update(np.asarray(e.ids + [-1] + e.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def finished(out: Path, fingerprint: str, gguf: bool, log) -> TrainResult | None:
    """The recorded result when out holds a finished training of the same fingerprint, whole (and said so)."""
    try:
        info = json.loads((out / "train.json").read_text())
    except (OSError, ValueError):
        return None
    outputs = [out / "adapter" / "adapter_config.json", out / "merged" / "config.json"]
    if gguf:
        outputs.append(out / "adapter.gguf")
    if info.get("fingerprint") != fingerprint or not all(p.is_file() for p in outputs):
        return None
    info.pop("fingerprint")
    info["out_dir"] = Path(info["out_dir"])
    info["gguf_adapter"] = Path(info["gguf_adapter"]) if info.get("gguf_adapter") else None
    result = TrainResult(**info)
    log(f"training already done for this dataset and these settings: {out} (delete train.json to retrain)")
    return result


def lora_weights(model) -> dict:
    """A detached copy of the adapter's weights (small: the LoRA matrices only)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_lora_weights(model, weights: dict) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, weights)


def resume(ckpt: Path, fingerprint: str, model, optimizer, scheduler, total_steps: int, log) -> TrainState:
    """The state to start from: a checkpoint's, loaded into model, optimizer, scheduler and torch's generator, when
    one of this fingerprint is there; a fresh state otherwise. Under DDP every rank loads it."""
    import torch
    from safetensors.torch import load_file

    with main_first():  # its renames, by rank 0 alone and before the others look
        recover_checkpoint(ckpt)
    if not (ckpt / "state.json").is_file():
        return TrainState()
    saved = json.loads((ckpt / "state.json").read_text())
    if saved["fingerprint"] != fingerprint:
        log("the dataset or [train] settings changed since the last checkpoint: training starts over")
        return TrainState()
    load_lora_weights(model, load_file(ckpt / "adapter.safetensors"))
    state = TrainState.from_json(saved)
    if (ckpt / "best.safetensors").is_file():
        state.best_weights = load_file(ckpt / "best.safetensors")
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))  # dropout masks continue as before
    log(f"resuming training from the checkpoint at step {state.step} of {total_steps}")
    return state


def save_checkpoint(ckpt: Path, state: TrainState, fingerprint: str, model, optimizer, scheduler) -> None:
    """The checkpoint, written by rank 0 alone under DDP: the ranks hold the same weights and optimiser state."""
    if not is_main():
        return
    import torch
    from safetensors.torch import save_file

    tmp = ckpt.with_name("checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(lora_weights(model), tmp / "adapter.safetensors")
    if state.best_weights is not None:
        save_file(state.best_weights, tmp / "best.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    atomic.write_text(tmp / "state.json", state.to_json(fingerprint))  # last: a checkpoint folder with it is complete
    # Swap in the new checkpoint so that a kill at any moment leaves one complete checkpoint on disk
    # (recover_checkpoint finds it if the kill fell between the two renames).
    old = ckpt.with_name("checkpoint.old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(ckpt: Path) -> None:
    """After a kill between save_checkpoint's two renames there is no checkpoint/, but checkpoint.tmp/ (complete
    when it holds state.json, the newer) or checkpoint.old/ (the one before): put the newest complete one back."""
    if (ckpt / "state.json").is_file():
        return
    for candidate in (ckpt.with_name("checkpoint.tmp"), ckpt.with_name("checkpoint.old")):
        if (candidate / "state.json").is_file():
            shutil.rmtree(ckpt, ignore_errors=True)
            candidate.rename(ckpt)
            return
