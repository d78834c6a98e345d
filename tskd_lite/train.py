"""Supervised fine-tuning of the target on the kept pairs: QLoRA on a CUDA GPU, plain LoRA on the CPU.

The whole loop is in train(): data, model, optimiser, steps, validation, checkpoints, outputs. Checkpoints are
written atomically every `checkpoint_every` steps; a killed run resumes from the last one when the dataset and
the training settings are unchanged (a fingerprint says so), and starts over, saying why, when they changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tskd_lite import atomic
from tskd_lite.errors import TskdError
from tskd_lite.jsonl import read_jsonl
from tskd_lite.recipe import Target, Train
from tskd_lite.target import Formatter, answer_logprobs, hf_dir, quiet_transformers


@dataclass(frozen=True)
class Example:
    ids: list[int]
    labels: list[int]


Pair = tuple[str, str, list[tuple[int, int]] | None]  # prompt, answer, byte spans carrying the loss (None: all)


def read_pairs(path: Path) -> list[Pair]:
    """(prompt, answer, None) from a chat or alpaca JSONL; one-line errors naming the line at fault."""
    pairs = []
    for at, row in read_jsonl(path, "dataset"):
        try:
            if "messages" in row:
                turns = {m["role"]: m["content"] for m in row["messages"]}
                prompt, answer = turns["user"], turns["assistant"]
            else:
                extra = row.get("input")
                if extra is not None and not isinstance(extra, str):
                    raise TypeError
                prompt, answer = row["instruction"] + (f"\n\n{extra}" if extra else ""), row["output"]
            if not all(isinstance(text, str) and text.strip() for text in (prompt, answer)):
                raise TypeError
        except (KeyError, TypeError, AttributeError):
            raise TskdError(
                f"{at}: expected a chat record (user and assistant messages) or an alpaca record (instruction, "
                "output), with non-empty text"
            ) from None
        pairs.append((prompt, answer, None))
    if not pairs:
        raise TskdError(f"dataset: {path} holds no pairs")
    return pairs


def make_teacher(data: Path, base: Path, out: Path, cfg: Train, *, progress: bool = True, log=print) -> TrainResult:
    """Fine-tune a base GGUF on (private) data the way a user's own teacher was made; out/adapter.gguf is then
    the teacher's LoRA, loaded by llama.cpp on the base GGUF (recipe: teacher.model = base, teacher.lora)."""
    from tskd_lite.gguf_meta import check_gguf

    check_gguf(base, "--base")
    pairs = read_pairs(data)
    claim_out(out, "--out")
    return train(Target(model=base), cfg, out, pairs, progress=progress, log=log)


# What train() writes in its folder; a folder holding any of them without the marker is someone else's.
_OUTPUT_NAMES = ("train.json", "adapter", "merged", "adapter.gguf", "checkpoint", "checkpoint.tmp", "checkpoint.old")
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


def split(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    order = np.random.default_rng([seed, 0]).permutation(len(examples))
    n_val = min(len(examples) - 1, max(1, round(val_fraction * len(examples)))) if val_fraction > 0 else 0
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def batch_order(n: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The batches of one epoch: a permutation that depends only on (seed, epoch), so a resume replays it."""
    order = np.random.default_rng([seed, 1, epoch]).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def collate(examples: list[Example], pad_id: int):
    """One example per row, padded to the longest: the plain layout, which the benchmark and tests compare with."""
    import torch

    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.ids)] = 1
    return ids, labels, mask


def pack(examples: list[Example], pad_id: int):
    """The examples laid end to end in rows as wide as the longest one (first fit, longest first), each example
    with its own positions from 0; returns ids, labels and position ids.

    Positions that restart tell transformers' mask builder where one example ends, so attention stays within an
    example (no cross-contamination; tested against the padded layout) while padding shrinks to the rows' tails.
    """
    import torch

    width = max(len(e.ids) for e in examples)
    rows: list[list[Example]] = []
    free: list[int] = []
    for e in sorted(examples, key=lambda e: -len(e.ids)):
        fits = next((r for r, space in enumerate(free) if len(e.ids) <= space), None)
        if fits is None:
            fits = len(rows)
            rows.append([])
            free.append(width)
        rows[fits].append(e)
        free[fits] -= len(e.ids)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for e in row:
            ids[r, at : at + len(e.ids)] = torch.tensor(e.ids)
            labels[r, at + 1 : at + len(e.labels)] = torch.tensor(e.labels[1:])  # never predict the next example
            positions[r, at : at + len(e.ids)] = torch.arange(len(e.ids))
            at += len(e.ids)
        positions[r, at:] = torch.arange(width - at)  # the padding tail: a block of its own that nothing reads
    return ids, labels, positions


def answer_loss(model, examples: list[Example], pad_id: int, device) -> tuple:
    """Mean cross-entropy over answer tokens of a batch (labels -100 elsewhere), and the answer-token count.

    The batch is packed (see pack), and the output layer runs only at the positions that predict an answer
    token: with Gemma 3's 262k-token vocabulary it is most of the model's cost, and prompt and padding positions
    would spend it for nothing.
    """
    import torch
    import torch.nn.functional as F

    ids, labels, positions = (t.to(device) for t in pack(examples, pad_id))
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    # No cache: transformers reads packing from the position ids only when there is none.
    decoder = causal_lm.get_decoder()
    hidden = decoder(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    wanted = target != -100
    logits = causal_lm.get_output_embeddings()(hidden[wanted])
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits.float(), target[wanted]), int(wanted.sum())


def _fingerprint(cfg: Train, examples: list[Example], target: Target, target_dir: Path, mode: str) -> str:
    """What a checkpoint and a finished training belong to: settings, tokens, and the target by content."""
    from tskd_lite.gguf_meta import identity

    models = [identity(target.model)]
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), str(target_dir), mode, models], default=str).encode())
    for e in examples:
        digest.update(np.asarray(e.ids + [-1] + e.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


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

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def train(target: Target, cfg: Train, out: Path, pairs: list[Pair], *, progress: bool = True, log=print) -> TrainResult:
    """Fine-tune target with LoRA on pairs; adapter, merged model and (for a GGUF target) GGUF LoRA go to out."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    quiet_transformers()
    claim_out(out, "training folder")
    target_dir = hf_dir(target, log)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    quantize = cfg.quantize == "nf4" or (cfg.quantize == "auto" and cuda)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    mode = ("QLoRA (NF4, double quantization)" if quantize else "LoRA (fp32)") + (" on CUDA" if cuda else " on the CPU")
    if not cuda:
        log(f"no CUDA GPU found: training {mode}")

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    fmt = Formatter.for_target(tokenizer, target)
    encoded = [fmt.encode(p, a, cfg.max_seq_len, keep) for p, a, keep in pairs]
    examples = [Example(*e) for e in encoded if e is not None]
    if len(encoded) - len(examples):
        log(f"skipped {len(encoded) - len(examples)} pairs whose prompt alone exceeds train.max_seq_len")
    if len(examples) < 2:
        raise TskdError(f"train: need at least 2 usable pairs, the dataset has {len(examples)}")
    train_set, val_set = split(examples, cfg.val_fraction, cfg.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    fingerprint = _fingerprint(cfg, examples, target, target_dir, mode)
    done = _finished(out, fingerprint, gguf=not target.model.is_dir())
    if done is not None:
        log(f"training already done for this dataset and these settings: {out} (delete train.json to retrain)")
        return done

    torch.manual_seed(cfg.seed)
    load_kwargs: dict = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if quantize:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=load_kwargs["dtype"],
        )
        load_kwargs["device_map"] = {"": device.index or 0} if cuda else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(target_dir, use_safetensors=True, **load_kwargs)
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cuda)
    else:
        model.to(device)
        if cuda:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
    modules = "all-linear" if cfg.target_modules == ("all-linear",) else list(cfg.target_modules)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=modules,
            task_type="CAUSAL_LM",
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if cuda:
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)
    scheduler = get_scheduler(
        cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps
    )

    if cfg.patience and not val_set:
        raise TskdError("train.patience: early stopping needs a held-out split (train.val_fraction > 0)")
    ckpt = out / "checkpoint"
    # best: the lowest held-out loss so far, its step, and the epochs since it improved (early stopping)
    state = {"step": 0, "curve": [], "answer_tokens": 0, "seconds": 0.0, "best": None, "stale_epochs": 0}
    best_weights = None
    _recover_checkpoint(ckpt)
    if (ckpt / "state.json").is_file():
        saved = json.loads((ckpt / "state.json").read_text())
        if saved["fingerprint"] == fingerprint:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(ckpt / "adapter.safetensors"))
            if (ckpt / "best.safetensors").is_file():
                best_weights = load_file(ckpt / "best.safetensors")
            optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
            scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
            torch.set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))  # dropout masks continue as before
            state = saved
            log(f"resuming training from the checkpoint at step {state['step']} of {total_steps}")
        else:
            log("the dataset or [train] settings changed since the last checkpoint: training starts over")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)

    def micro_batch(k: int) -> list[Example]:
        epoch, index = divmod(k, per_epoch)
        return [train_set[i] for i in batch_order(len(train_set), cfg.batch_size, epoch, cfg.seed)[index]]

    def validate() -> float | None:
        if not val_set:
            return None
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), autocast:
            for i in range(0, len(val_set), cfg.batch_size):
                loss, n = answer_loss(model, val_set[i : i + cfg.batch_size], pad_id, device)
                total, count = total + loss.item() * n, count + n
        model.train()
        return total / max(count, 1)

    model.train()
    bar = tqdm(
        total=total_steps, initial=state["step"], desc="train", unit="step", disable=not progress, dynamic_ncols=True
    )

    def save_checkpoint() -> None:
        _checkpoint(model, optimizer, scheduler, {**state, "fingerprint": fingerprint}, ckpt, best_weights)

    interrupted = _defer_ctrl_c()
    try:
        while state["step"] < total_steps:
            step = state["step"]
            started = time.perf_counter()
            step_loss, step_tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                with autocast:
                    loss, n = answer_loss(model, micro_batch(step * cfg.grad_accum + micro), pad_id, device)
                (loss / cfg.grad_accum).backward()
                step_loss, step_tokens = step_loss + loss.item() / cfg.grad_accum, step_tokens + n
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["seconds"] += time.perf_counter() - started
            state["answer_tokens"] += step_tokens
            state["step"] = step + 1
            point = {"step": state["step"], "loss": step_loss, "lr": scheduler.get_last_lr()[0]}
            end_of_epoch = (state["step"] * cfg.grad_accum) // per_epoch > (step * cfg.grad_accum) // per_epoch
            stop = False
            if end_of_epoch or state["step"] == total_steps:
                point["val_loss"] = validate()
                point["epoch"] = state["step"] * cfg.grad_accum / per_epoch
                if cfg.patience and point["val_loss"] is not None:
                    if state["best"] is None or point["val_loss"] < state["best"]["val_loss"]:
                        state["best"] = {"val_loss": point["val_loss"], "step": state["step"]}
                        state["stale_epochs"] = 0
                        best_weights = _lora_weights(model)
                    else:
                        state["stale_epochs"] += 1
                        stop = state["stale_epochs"] >= cfg.patience
            state["curve"].append(point)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{state['answer_tokens'] / state['seconds']:.0f}")
            bar.update()
            if stop:
                log(
                    f"early stopping at step {state['step']}: the held-out loss has not improved for {cfg.patience} "
                    f"epochs; keeping step {state['best']['step']} (held-out loss {state['best']['val_loss']:.4f})"
                )
                break
            if state["step"] % cfg.checkpoint_every == 0 and state["step"] < total_steps:
                save_checkpoint()
            if interrupted():  # Ctrl-C: the step is finished; save it, so that the resume loses nothing
                bar.close()
                save_checkpoint()
                log(f"interrupted: training saved at step {state['step']} of {total_steps} in {ckpt}")
                raise KeyboardInterrupt
    finally:
        interrupted.restore()
    bar.close()
    if state["step"] % cfg.checkpoint_every:  # a kill while the outputs are written loses no step
        save_checkpoint()
    if best_weights is not None and state["best"]["step"] != state["step"]:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, best_weights)

    # Outputs are written beside the old ones as .part and renamed into place after train.json, the done-marker,
    # is removed; the new train.json comes last. A kill at any moment leaves either the old outputs under their
    # marker, or no marker (so the next run trains again, from the checkpoint), never a marker over mixed outputs.
    (out / "train.json").unlink(missing_ok=True)
    adapter_part = out / "adapter.part"
    shutil.rmtree(adapter_part, ignore_errors=True)
    model.save_pretrained(adapter_part)
    merged_part = _merge(target_dir, adapter_part, out / "merged.part", tokenizer)
    gguf_adapter, gguf_check = None, None
    if not target.model.is_dir():
        from tskd_lite import lora_gguf

        gguf_adapter = out / "adapter.gguf"
        gguf_part = out / "adapter.gguf.part"
        lora_gguf.write(model, gguf_part, lora_gguf.gguf_arch(model.get_base_model().config, target.model))
        gguf_check = check_gguf_adapter(
            target.model, gguf_part, target_dir, merged_part, fmt, [p[:2] for p in pairs[:3]]
        )
        gguf_part.replace(gguf_adapter)
        log(
            f"GGUF LoRA in llama.cpp vs merged model in transformers: mean |Δ log p| {gguf_check['mean_abs_diff']:.4f}"
            f" (max {gguf_check['max_abs_diff']:.4f}) over {gguf_check['tokens']} tokens; without the adapter "
            f"{gguf_check['base_mean_abs_diff']:.4f} (max {gguf_check['base_max_abs_diff']:.4f})"
        )
    for part, final in ((adapter_part, out / "adapter"), (merged_part, out / "merged")):
        shutil.rmtree(final, ignore_errors=True)
        part.rename(final)
    result = TrainResult(
        out_dir=out,
        mode=mode,
        device=str(device),
        template=fmt.kind,
        n_train=len(train_set),
        n_val=len(val_set),
        steps=state["step"],
        best_step=state["best"]["step"] if state["best"] else None,
        answer_tokens=state["answer_tokens"],
        seconds=state["seconds"],
        tokens_per_s=state["answer_tokens"] / max(state["seconds"], 1e-9),
        curve=state["curve"],
        gguf_adapter=gguf_adapter,
        gguf_check=gguf_check,
    )
    atomic.write_text(out / "train.json", json.dumps(result.to_json() | {"fingerprint": fingerprint}, indent=2))
    shutil.rmtree(ckpt, ignore_errors=True)
    return result


def _finished(out: Path, fingerprint: str, gguf: bool) -> TrainResult | None:
    """The recorded result when out holds a finished training of the same fingerprint, whole."""
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
    return TrainResult(**info)


def _lora_weights(model) -> dict:
    """A detached copy of the adapter's weights (small: the LoRA matrices only)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def _checkpoint(model, optimizer, scheduler, state: dict, ckpt: Path, best_weights: dict | None = None) -> None:
    import torch
    from safetensors.torch import save_file

    tmp = ckpt.with_name("checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_lora_weights(model), tmp / "adapter.safetensors")
    if best_weights is not None:
        save_file(best_weights, tmp / "best.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    atomic.write_text(tmp / "state.json", json.dumps(state))  # last: a checkpoint folder with it is complete
    # Swap in the new checkpoint so that a kill at any moment leaves one complete checkpoint on disk
    # (_recover_checkpoint finds it if the kill fell between the two renames).
    old = ckpt.with_name("checkpoint.old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


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


def _recover_checkpoint(ckpt: Path) -> None:
    """After a kill between _checkpoint's two renames there is no checkpoint/, but checkpoint.tmp/ (complete when
    it holds state.json, the newer) or checkpoint.old/ (the one before): put the newest complete one back."""
    if (ckpt / "state.json").is_file():
        return
    for candidate in (ckpt.with_name("checkpoint.tmp"), ckpt.with_name("checkpoint.old")):
        if (candidate / "state.json").is_file():
            shutil.rmtree(ckpt, ignore_errors=True)
            candidate.rename(ckpt)
            return


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


def check_gguf_adapter(
    target_gguf: Path, adapter: Path, target_dir: Path, merged_dir: Path, fmt: Formatter, pairs: list[tuple[str, str]]
) -> dict:
    """Log-probs of a few answers in llama.cpp (target GGUF + GGUF LoRA) against the merged model in transformers,
    on the same token ids; and, as the yardstick, the same comparison without the adapter: on a quantized GGUF the
    two runtimes already disagree by the quantization, and the adapter should add nothing beyond it."""
    import torch
    from transformers import AutoModelForCausalLM

    from tskd_lite.engine import Engine
    from tskd_lite.recipe import ModelSpec

    ids = []
    for prompt, answer in pairs:
        ids.append((fmt.prompt_ids(prompt), fmt.tokenizer(answer, add_special_tokens=False)["input_ids"][:64]))

    def disagreement(lora: Path | None, hf_dir: Path) -> np.ndarray:
        engine = Engine(ModelSpec(model=target_gguf, lora=lora, n_ctx=512), role="target")
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, use_safetensors=True).eval()
        diffs = []
        for head, tail in ids:
            diffs.append(np.abs(engine.score([(head, tail)])[0] - answer_logprobs(model, head, tail)))
        engine.close()
        return np.concatenate(diffs)

    adapted, plain = disagreement(adapter, merged_dir), disagreement(None, target_dir)
    return {
        "max_abs_diff": float(adapted.max()),
        "mean_abs_diff": float(adapted.mean()),
        "tokens": int(adapted.size),
        "base_max_abs_diff": float(plain.max()),
        "base_mean_abs_diff": float(plain.mean()),
    }
