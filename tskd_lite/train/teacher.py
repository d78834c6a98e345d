"""make-teacher: a base GGUF fine-tuned on (private) data into a teacher, the way a user's own teacher was made,
and the teacher's training settings in one place (the make-teacher command and bench/transfer.py both take them
from teacher_settings)."""

from __future__ import annotations

from pathlib import Path

from tskd_lite.recipe import Target, Train
from tskd_lite.teacher_defaults import TEACHER_DEFAULTS
from tskd_lite.train.data import read_pairs
from tskd_lite.train.loop import train
from tskd_lite.train.outputs import TrainResult, claim_out


def teacher_settings(
    *,
    rank: int = TEACHER_DEFAULTS["rank"],
    learning_rate: float = TEACHER_DEFAULTS["learning_rate"],
    epochs: int = TEACHER_DEFAULTS["epochs"],
    batch_size: int = TEACHER_DEFAULTS["batch_size"],
    max_seq_len: int = TEACHER_DEFAULTS["max_seq_len"],
    seed: int = TEACHER_DEFAULTS["seed"],
    patience: int = TEACHER_DEFAULTS["patience"],
    val_fraction: float = TEACHER_DEFAULTS["val_fraction"],
) -> Train:
    """A teacher's [train] settings: LoRA of alpha twice the rank, no dropout, no replay, the other settings
    [train]'s defaults. val_fraction 0 holds a tenth out when early stopping (patience) needs a held-out split,
    none otherwise."""
    return Train(
        rank=rank,
        alpha=2.0 * rank,
        learning_rate=learning_rate,
        epochs=epochs,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        seed=seed,
        val_fraction=val_fraction or (0.1 if patience else 0.0),
        patience=patience,
        dropout=0.0,
        replay=0.0,  # the teacher is to learn its data, not to keep what the base did
    )


def make_teacher(
    data: Path, base: Path, out: Path, cfg: Train | None = None, *, progress: bool = True, log=print
) -> TrainResult:
    """Fine-tune a base GGUF on (private) data the way a user's own teacher was made; out/adapter.gguf is then
    the teacher's LoRA, loaded by llama.cpp on the base GGUF (recipe: teacher.model = base, teacher.lora).
    cfg: teacher_settings() unless given."""
    from tskd_lite.gguf_meta import check_gguf

    check_gguf(base, "--base")
    pairs = read_pairs(data)
    claim_out(out, "--out")
    return train(
        Target(model=base), cfg if cfg is not None else teacher_settings(), out, pairs, progress=progress, log=log
    )
