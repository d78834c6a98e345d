"""train(): setup (setup.py, data.py), a resume (checkpoint.py), one `while` loop over the optimiser steps, and the
outputs (outputs.py); a first Ctrl-C lets the step in progress finish and saves it (_defer_ctrl_c).

The loop reads top to bottom in nanoGPT's order, as far as resuming bit for bit allows: micro-steps, clip, step
(the learning rate is the schedule's, stepped with the optimiser), eval, log, stop, checkpoint. nanoGPT evaluates
at the top of an iteration; here it is after the step that ends an epoch (the same weights), so that the last
step's loss is measured too and a checkpoint always follows its step's eval.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

from tskd_lite.errors import TskdError
from tskd_lite.recipe import Target, Train
from tskd_lite.target import hf_dir, quiet_transformers
from tskd_lite.train.checkpoint import (
    TrainState,
    fingerprint_of,
    finished,
    load_lora_weights,
    lora_weights,
    resume,
    save_checkpoint,
)
from tskd_lite.train.data import Example, Pair, answer_loss, encode, formatter, split, step_batches
from tskd_lite.train.outputs import TrainResult, claim_out, publish
from tskd_lite.train.replay import replay_pairs
from tskd_lite.train.setup import GRAD_CLIP, choose_hardware, count_steps, load_model, make_optimizer, make_schedule


def train(target: Target, cfg: Train, out: Path, pairs: list[Pair], *, progress: bool = True, log=print) -> TrainResult:
    """Fine-tune target with LoRA on pairs; adapter, merged model and (for a GGUF target) GGUF LoRA go to out."""
    import torch

    # -- setup: device, data, the done-marker, model, optimiser, schedule, resume --------------------------------
    quiet_transformers()
    claim_out(out, "training folder")
    target_dir = hf_dir(target, log)
    hw = choose_hardware(cfg, log)
    fmt, pad_id = formatter(target_dir, target)
    examples, train_set, val_set, n_replay = _dataset(fmt, target_dir, target, cfg, pairs, out, progress, log)
    fingerprint = fingerprint_of(cfg, examples, target, target_dir, hw.mode)
    if (done := finished(out, fingerprint, gguf=not target.model.is_dir(), log=log)) is not None:
        return done
    torch.manual_seed(cfg.seed)  # the LoRA's initial weights, and the dropout masks after them
    model = load_model(target_dir, cfg, hw)
    params, optimizer = make_optimizer(model, cfg, hw)
    per_epoch, total_steps = count_steps(cfg, len(train_set))
    scheduler = make_schedule(optimizer, cfg, total_steps)
    ckpt = out / "checkpoint"
    state = resume(ckpt, fingerprint, model, optimizer, scheduler, total_steps, log)
    autocast = hw.autocast()

    # -- the loop: one optimiser step an iteration -----------------------------------------------------------------
    model.train()
    bar = _progress_bar(total_steps, state.step, progress)
    interrupted = _defer_ctrl_c()
    try:
        while state.step < total_steps and not state.stopped(cfg.patience):
            step, started = state.step, time.perf_counter()
            # micro-steps: the step's grad_accum batches, forward and backward
            batches = step_batches(train_set, step, per_epoch, cfg)
            step_loss, step_tokens = _micro_steps(model, batches, pad_id, hw.device, autocast)
            # clip, step (the learning rate follows the schedule, stepped with the optimiser)
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.seconds += time.perf_counter() - started
            state.answer_tokens += step_tokens
            state.step = step + 1
            point = {"step": state.step, "loss": step_loss, "lr": scheduler.get_last_lr()[0]}
            # eval at an epoch's end and after the last step; early stopping keeps the best epoch's weights
            stop = False
            if _ends_epoch(step, cfg.grad_accum, per_epoch) or state.step == total_steps:
                point["val_loss"] = _validate(model, val_set, cfg.batch_size, pad_id, hw.device, autocast)
                point["epoch"] = state.step * cfg.grad_accum / per_epoch
                stop = _early_stopping(state, point["val_loss"], cfg.patience, model)
            state.curve.append(point)
            # log
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{state.answer_tokens / state.seconds:.0f}")
            bar.update()
            # checkpoint, stop (Ctrl-C first: the step that stops early saves too, and its resume stops at once)
            if state.step % cfg.checkpoint_every == 0 and state.step < total_steps:
                save_checkpoint(ckpt, state, fingerprint, model, optimizer, scheduler)
            if interrupted():  # Ctrl-C: the step is finished; save it, so that the resume loses nothing
                bar.close()
                save_checkpoint(ckpt, state, fingerprint, model, optimizer, scheduler)
                log(f"interrupted: training saved at step {state.step} of {total_steps} in {ckpt}")
                raise KeyboardInterrupt
            if stop:
                log(_stopped_early(state, cfg.patience))
    finally:
        interrupted.restore()
    bar.close()

    # -- outputs: the best weights, the adapter, the merged model, the GGUF LoRA, train.json -----------------------
    if state.step % cfg.checkpoint_every:  # a kill while the outputs are written loses no step
        save_checkpoint(ckpt, state, fingerprint, model, optimizer, scheduler)
    if interrupted.pressed:  # pressed after the loop's last check: saved above, the outputs not started
        raise KeyboardInterrupt
    if state.best_weights is not None and state.best["step"] != state.step:
        load_lora_weights(model, state.best_weights)
    run = dict(mode=hw.mode, device=str(hw.device), template=fmt.kind, n_train=len(train_set), n_val=len(val_set))
    run["n_replay"] = n_replay
    result = publish(out, target, target_dir, model, fmt, pairs, run | state.summary(), fingerprint, log)
    shutil.rmtree(ckpt, ignore_errors=True)
    return result


def _dataset(fmt, target_dir: Path, target: Target, cfg: Train, pairs: list[Pair], out: Path, progress: bool, log):
    """The pairs and the replayed ones (replay.py) as examples, their training and held-out splits, and how many
    were replayed."""
    replayed = replay_pairs(target_dir, target, cfg, len(pairs), out, progress=progress, log=log)
    examples = encode(fmt, pairs + replayed, cfg.max_seq_len, log)
    train_set, val_set = split(examples, cfg.val_fraction, cfg.seed)
    if cfg.patience and not val_set:
        raise TskdError("train.patience: early stopping needs a held-out split (train.val_fraction > 0)")
    return examples, train_set, val_set, len(replayed)


def _micro_steps(model, batches: list[list[Example]], pad_id: int, device, autocast) -> tuple[float, int]:
    """Forward and backward over one step's batches, each loss divided by their number so that the gradients add
    up to the mean's; the step's loss and the count of tokens that carried it."""
    step_loss, step_tokens = 0.0, 0
    for batch in batches:
        with autocast:
            loss, n = answer_loss(model, batch, pad_id, device)
        (loss / len(batches)).backward()
        step_loss, step_tokens = step_loss + loss.item() / len(batches), step_tokens + n
    return step_loss, step_tokens


def _early_stopping(state: TrainState, val_loss: float | None, patience: int, model) -> bool:
    """After an epoch's held-out loss: the weights kept when it is the lowest so far; whether to stop (it has not
    improved for `patience` epochs). Off without patience or a held-out split."""
    if not patience or val_loss is None:
        return False
    if state.improved(val_loss):
        state.best_weights = lora_weights(model)
    return state.stopped(patience)


def _stopped_early(state: TrainState, patience: int) -> str:
    return (
        f"early stopping at step {state.step}: the held-out loss has not improved for {patience} epochs; "
        f"keeping step {state.best['step']} (held-out loss {state.best['val_loss']:.4f})"
    )


def _progress_bar(total_steps: int, initial: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total_steps, initial=initial, desc="train", unit="step", disable=not progress, dynamic_ncols=True)


def _ends_epoch(step: int, grad_accum: int, per_epoch: int) -> bool:
    """Whether the optimiser step after `step` steps finishes an epoch's batches."""
    return ((step + 1) * grad_accum) // per_epoch > (step * grad_accum) // per_epoch


def _validate(model, val_set: list[Example], batch_size: int, pad_id: int, device, autocast) -> float | None:
    """The mean loss per answer token on the held-out split (None without one)."""
    import torch

    if not val_set:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast:
        for i in range(0, len(val_set), batch_size):
            loss, n = answer_loss(model, val_set[i : i + batch_size], pad_id, device)
            total, count = total + loss.item() * n, count + n
    model.train()
    return total / max(count, 1)


class _defer_ctrl_c:  # noqa: N801 (used like a function)
    """While training, a first Ctrl-C sets a flag that the loop checks after each step (a step cut in half cannot be
    checkpointed); a second one interrupts at once. Calling the object says whether Ctrl-C was pressed; outside the
    main thread (no signals there) it never is."""

    def __init__(self) -> None:
        self.pressed = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __call__(self) -> bool:
        if self.pressed:
            self.restore()
        return self.pressed

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None
