"""Several devices: data-parallel training with one process per device, as `torchrun` and `accelerate launch` start
them (they set WORLD_SIZE, RANK and LOCAL_RANK). Without those variables there is one process, and every function
here does nothing, so a single process trains exactly as it did before this module existed.

Every rank holds the whole dataset and the same model; each optimiser step's batches are split between the ranks
(shard), and their gradients are summed after the step's micro-steps (sum_grads): each rank scales its loss by its
share of the batch's answer tokens, so that the sum is the single-process gradient. This is DDP's arithmetic without
torch's DistributedDataParallel wrapper: answer_loss runs the decoder and the output layer itself (the output layer
at the answer positions only), around the model's forward that the wrapper's hooks rely on, and one all-reduce of
the small LoRA gradients per step is what the wrapper's no_sync accumulation would send anyway.

Rank 0 is the main one: it alone writes (the folder's marker, replay.jsonl, checkpoints, outputs, train.json) and
logs; the others wait at a barrier where they need what it wrote.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from tskd_lite.errors import TskdError

# The other ranks wait at the final barrier while rank 0 merges the model and checks its GGUF LoRA in llama.cpp,
# which takes far longer than the process group's default 30 minutes on a large target.
_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    size: int = 1  # processes in all
    rank: int = 0  # this one's, 0 to size - 1
    local_rank: int = 0  # this one's on its machine: the index of its GPU


def world() -> World:
    """The processes of this training, read from the variables torchrun and accelerate launch set."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(size, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))


def is_main() -> bool:
    return world().rank == 0


def start() -> None:
    """Join the process group (nccl between GPUs, gloo between CPU processes); nothing for a single process, or
    when the caller's program has joined one already."""
    import torch
    import torch.distributed as td

    w = world()
    if w.size == 1 or td.is_initialized():
        return
    for tool in ("FSDP", "DEEPSPEED"):  # accelerate's config says so; this loop would replicate the model anyway
        if os.environ.get(f"ACCELERATE_USE_{tool}", "").lower() in ("1", "true"):
            raise TskdError(f"train: accelerate's {tool} configuration is not supported; launch with DDP")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(w.local_rank)  # nccl's collectives and barrier() run on the current device
    td.init_process_group("nccl" if cuda else "gloo", timeout=_TIMEOUT)
    atexit.register(_stop)  # nccl warns at exit about a group left open


def _stop() -> None:
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()


def on_main(log: Callable) -> Callable:
    """log on rank 0, a function that says nothing on the others (one voice, not one per device)."""
    return log if is_main() else (lambda *_: None)


def barrier() -> None:
    if world().size > 1:
        import torch.distributed as td

        td.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """The block on rank 0 first, then on the others: what rank 0 writes there (the folder's marker, the target's
    conversion, replay.jsonl, a recovered checkpoint) the others find and read rather than write again."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(items: list) -> list:
    """This rank's share of items (every size-th one): the shares of all ranks are the whole list."""
    w = world()
    return items if w.size == 1 else items[w.rank :: w.size]


def all_reduce_sum(values: list[float]) -> list[float]:
    """The sums over the ranks of each value (float64: losses and token counts add up exactly enough)."""
    if world().size == 1:
        return values
    import torch
    import torch.distributed as td

    summed = torch.tensor(values, dtype=torch.float64, device=_device())
    td.all_reduce(summed)
    return summed.tolist()


def any_true(flag: bool) -> bool:
    """Whether flag is true on any rank: a decision (Ctrl-C) that every rank must take at the same step."""
    return flag if world().size == 1 else all_reduce_sum([float(flag)])[0] > 0


def from_main(value: float) -> float:
    """Rank 0's value on every rank: the held-out loss early stopping decides on, the same to the last bit."""
    if world().size == 1:
        return value
    import torch
    import torch.distributed as td

    sent = torch.tensor([value], dtype=torch.float64, device=_device())
    td.broadcast(sent, src=0)
    return sent.item()


def sum_grads(params: list) -> None:
    """Each parameter's gradient summed over the ranks, in one message; a rank whose share of every batch was
    empty (a batch smaller than the world) adds zeros."""
    if world().size == 1:
        return
    import torch
    import torch.distributed as td

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    td.all_reduce(flat)
    for p, part in zip(params, flat.split([g.numel() for g in grads]), strict=True):
        p.grad = part.view_as(p).to(p.dtype)


def broadcast_params(params: list) -> None:
    """Rank 0's weights on every rank: the seed makes the replicas' initial LoRA weights equal on equal devices,
    this whatever the devices."""
    if world().size == 1:
        return
    import torch
    import torch.distributed as td

    with torch.no_grad():
        for p in params:
            td.broadcast(p.data, src=0)


def reseed(seed: int, step: int) -> None:
    """Under DDP, torch's generator (the dropout masks) seeded from (seed, step, rank) before each step: each rank
    draws masks of its own, and a resume draws the same ones without a checkpoint of every rank's generator. A
    single process keeps its one stream, which the checkpoint saves."""
    w = world()
    if w.size == 1:
        return
    import numpy as np
    import torch

    torch.manual_seed(int(np.random.SeedSequence([seed, 3, step, w.rank]).generate_state(1)[0]))


def _device():
    import torch
    import torch.distributed as td

    return torch.device("cuda", world().local_rank) if td.get_backend() == "nccl" else torch.device("cpu")
