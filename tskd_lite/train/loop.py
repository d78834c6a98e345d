"""train(): setup (setup.py, data.py), a resume (checkpoint.py), one `while` loop over the optimiser steps, and the
outputs (outputs.py); a first Ctrl-C lets the step in progress finish and saves it (_defer_ctrl_c).

The loop reads top to bottom in nanoGPT's order, as far as resuming bit for bit allows: micro-steps, clip, step
(the learning rate is the schedule's, stepped with the optimiser), eval, log, stop, checkpoint. nanoGPT evaluates
at the top of an iteration; here it is after the step that ends an epoch (the same weights), so that the last
step's loss is measured too and a checkpoint always follows its step's eval.

Under torchrun or accelerate launch the same loop runs in every process (dist.py): each runs its share of each
batch, the gradients are summed before the clip, the held-out loss and a Ctrl-C are decided for all ranks at
once, and rank 0 alone logs and writes.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import tskd_lite.train.dist as dist
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
from tskd_lite.train.data import Example, Pair, answer_loss, answer_tokens, encode, formatter, split, step_batches
from tskd_lite.train.outputs import TrainResult, claim_out, publish
from tskd_lite.train.replay import replay_pairs
from tskd_lite.train.setup import GRAD_CLIP, choose_hardware, count_steps, load_model, make_optimizer, make_schedule


def train(target: Target, cfg: Train, out: Path, pairs: list[Pair], *, progress: bool = True, log=print) -> TrainResult:
    """Fine-tune target with LoRA on pairs; adapter, merged model and (for a GGUF target) GGUF LoRA go to out."""
    import torch

    # -- setup: processes, device, data, the done-marker, model, optimiser, schedule, resume -----------------------
    quiet_transformers()
    dist.start()
    log, progress = dist.on_main(log), progress and dist.is_main()
    ckpt = out / "checkpoint"
    with dist.main_first():  # rank 0 writes the marker, the target's conversion and replay.jsonl; the others read
        claim_out(out, "training folder")
        target_dir = hf_dir(target, log)
        fmt, pad_id = formatter(target_dir, target)
        examples, train_set, val_set, n_replay = _dataset(fmt, target_dir, target, cfg, pairs, out, progress, log)
    hw = choose_hardware(cfg, log)
    fingerprint = fingerprint_of(cfg, examples, target, target_dir, hw.mode)
    if (done := finished(out, fingerprint, gguf=not target.model.is_dir(), log=log)) is not None:
        return done
    torch.manual_seed(cfg.seed)  # the LoRA's initial weights, and the dropout masks after them
    model = load_model(target_dir, cfg, hw)
    params, optimizer = make_optimizer(model, cfg, hw)
    per_epoch, total_steps = count_steps(cfg, len(train_set))
    scheduler = make_schedule(optimizer, cfg, total_steps)
    state = resume(ckpt, fingerprint, model, optimizer, scheduler, total_steps, log)  # on every rank

    # -- the loop: one optimiser step an iteration -----------------------------------------------------------------
    model.train()
    bar = _progress_bar(total_steps, state.step, progress)
    interrupted = _defer_ctrl_c()
    try:
        while state.step < total_steps and not state.stopped(cfg.patience):
            step, started = state.step, time.perf_counter()
            # micro-steps: the step's grad_accum batches (this rank's share of each), forward and backward
            dist.reseed(cfg.seed, step)
            batches = step_batches(train_set, step, per_epoch, cfg)
            step_loss, step_tokens = _micro_steps(model, batches, pad_id, hw.device, hw.autocast())
            dist.sum_grads(params)  # the ranks' shares add up to the whole batches' gradient
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
                point["val_loss"] = _validate(model, val_set, cfg.batch_size, pad_id, hw.device, hw.autocast())
                point["epoch"] = state.step * cfg.grad_accum / per_epoch
                stop = _early_stopping(state, point["val_loss"], cfg.patience, model)
            state.curve.append(point)
            # log
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{state.answer_tokens / state.seconds:.0f}")
            bar.update()
            # checkpoint (rank 0), stop (Ctrl-C first: the step that stops early saves too, its resume stops at once)
            if state.step % cfg.checkpoint_every == 0 and state.step < total_steps:
                save_checkpoint(ckpt, state, fingerprint, model, optimizer, scheduler)
            if dist.any_true(interrupted()):  # Ctrl-C (on any rank): the step is finished; save it, lose nothing
                bar.close()
                save_checkpoint(ckpt, state, fingerprint, model, optimizer, scheduler)
                log(f"interrupted: training saved at step {state.step} of {total_steps} in {ckpt}")
                raise KeyboardInterrupt
            if stop:
                log(_stopped_early(state, cfg.patience))
    finally:
        interrupted.restore()
    bar.close()

    # -- outputs (rank 0): the best weights, the adapter, the merged model, the GGUF LoRA, train.json ---------------
    if state.step % cfg.checkpoint_every:  # a kill while the outputs are written loses no step
        save_checkpoint(ckpt, state, fingerprint, model, optimizer, scheduler)
    if dist.any_true(interrupted.pressed):  # pressed after the loop's last check: saved above, no outputs started
        raise KeyboardInterrupt
    if state.best_weights is not None and state.best["step"] != state.step:
        load_lora_weights(model, state.best_weights)
    run = dict(mode=hw.mode, device=str(hw.device), template=fmt.kind, n_train=len(train_set), n_val=len(val_set))
    run["n_replay"] = n_replay
    return _outputs(out, target, target_dir, model, fmt, pairs, run | state.summary(), fingerprint, log)


def _outputs(out: Path, target: Target, target_dir: Path, model, fmt, pairs, fields: dict, fingerprint: str, log):
    """Rank 0 publishes the outputs and removes the checkpoint; the other ranks wait for it, then read the result
    from the train.json it wrote."""
    if dist.is_main():
        fields |= {"processes": dist.world().size}
        result = publish(out, target, target_dir, model, fmt, pairs, fields, fingerprint, log)
        shutil.rmtree(out / "checkpoint", ignore_errors=True)
    dist.barrier()
    return result if dist.is_main() else finished(out, fingerprint, gguf=not target.model.is_dir(), log=log)


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
    up to the mean's; the step's loss and the count of tokens that carried it.

    Under DDP a rank runs its share of each batch, its mean loss weighted by its share of the batch's answer
    tokens: packing gives the ranks different counts, and the weights make the ranks' summed gradients the whole
    batch's mean. A single process's share is the batch, its weight exactly 1.0: the numbers are those of before.
    """
    parts, step_tokens = [], 0
    for batch in batches:
        n = answer_tokens(batch)  # the whole batch's: every rank has all of it, so nothing is sent for it
        mine = dist.shard(batch)
        part = 0.0
        if mine:  # a batch smaller than the world leaves some ranks out; dist.sum_grads adds zeros for them
            with autocast:
                loss, n_mine = answer_loss(model, mine, pad_id, device)
            weight = n_mine / max(n, 1)
            (loss * weight / len(batches)).backward()
            part = loss.item() * weight
        parts.append(part)
        step_tokens += n
    step_loss = 0.0
    for part in dist.all_reduce_sum(parts):  # each batch's mean loss over the ranks
        step_loss += part / len(batches)
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
    """The mean loss per answer token on the held-out split (None without one), the same on every rank."""
    import torch

    if not val_set:
        return None
    model.eval()
    total, count = 0.0, 0
    mine = dist.shard(val_set)  # under DDP each rank scores its share; the sums over the ranks make the mean
    with torch.no_grad(), autocast:
        for i in range(0, len(mine), batch_size):
            loss, n = answer_loss(model, mine[i : i + batch_size], pad_id, device)
            total, count = total + loss.item() * n, count + n
    model.train()
    total, count = dist.all_reduce_sum([total, count])
    return dist.from_main(total / max(count, 1))


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
