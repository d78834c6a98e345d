"""What training runs on and with: the device and whether to quantize, the model with its LoRA, the optimiser, the
step count and the learning-rate schedule. QLoRA (NF4) on a CUDA GPU, plain fp32 LoRA on the CPU."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tskd_lite.recipe import Train
from tskd_lite.train.dist import broadcast_params, world

# The settings that are not [train]'s (recipe.Train holds those, with their defaults and bounds).
GRAD_CLIP = 1.0  # the gradient's largest norm before a step
WEIGHT_DECAY = 0.0  # AdamW without weight decay


@dataclass(frozen=True)
class Hardware:
    cuda: bool
    device: Any  # torch.device
    quantize: bool  # NF4 (QLoRA)
    bf16: bool  # weights and autocast in bfloat16 (a CUDA GPU that has it)
    mode: str  # in words, for the log and train.json; part of the fingerprint

    def autocast(self):
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else torch.autocast("cpu", enabled=False)


def choose_hardware(cfg: Train, log) -> Hardware:
    """CUDA when there is a GPU; NF4 when train.quantize says so ("auto": on CUDA only)."""
    import torch

    cuda = torch.cuda.is_available()
    quantize = cfg.quantize == "nf4" or (cfg.quantize == "auto" and cuda)
    bf16 = cuda and torch.cuda.is_bf16_supported()
    mode = ("QLoRA (NF4, double quantization)" if quantize else "LoRA (fp32)") + (" on CUDA" if cuda else " on the CPU")
    if not cuda:
        log(f"no CUDA GPU found: training {mode}")
    w = world()
    # under DDP each process has its own GPU, the one of its local rank (a single process keeps plain "cuda")
    device = torch.device("cuda", w.local_rank) if cuda and w.size > 1 else torch.device("cuda" if cuda else "cpu")
    return Hardware(cuda, device, quantize, bf16, mode)


def lora_config(cfg: Train):
    from peft import LoraConfig

    modules = "all-linear" if cfg.target_modules == ("all-linear",) else list(cfg.target_modules)
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=modules,
        task_type="CAUSAL_LM",
    )


def load_model(target_dir: Path, cfg: Train, hw: Hardware):
    """The target's weights (NF4 for QLoRA), gradient checkpointing on CUDA, and a fresh LoRA adapter over them:
    its initial weights are drawn from torch's generator, which the caller has seeded."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    load_kwargs: dict = {"dtype": torch.bfloat16 if hw.bf16 else torch.float32}
    if hw.quantize:
        from tskd_lite.hf import nf4_config

        load_kwargs["quantization_config"] = nf4_config(load_kwargs["dtype"])
        # the whole model on this process's GPU (under DDP: {"": local_rank}), never spread over the others
        load_kwargs["device_map"] = {"": hw.device.index or 0} if hw.cuda else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(target_dir, use_safetensors=True, **load_kwargs)
    # Non-reentrant checkpointing: torch's recommended kind, the one that works with DDP's gradient hooks, and one
    # that passes gradients through a block whose inputs need none (the reentrant kind does not: frozen embeddings).
    checkpointing = {"use_reentrant": False}
    if hw.quantize:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=hw.cuda, gradient_checkpointing_kwargs=checkpointing
        )
    else:
        model.to(hw.device)
        if hw.cuda:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
            model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(cfg))
    broadcast_params([p for p in model.parameters() if p.requires_grad])  # under DDP: rank 0's LoRA everywhere
    return model


def make_optimizer(model, cfg: Train, hw: Hardware) -> tuple[list, Any]:
    """The trainable (LoRA) parameters and AdamW over them: paged 8-bit on CUDA, torch's own on the CPU."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if hw.cuda:
        import bitsandbytes as bnb

        return params, bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    return params, torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)


def count_steps(cfg: Train, n_train: int) -> tuple[int, int]:
    """Batches per epoch, and optimiser steps in all (train.max_steps, or the epochs' batches over grad_accum)."""
    per_epoch = math.ceil(n_train / cfg.batch_size)
    return per_epoch, cfg.max_steps or math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)


def make_schedule(optimizer, cfg: Train, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(cfg.schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
