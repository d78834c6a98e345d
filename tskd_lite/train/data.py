"""What training reads: (prompt, answer) pairs, their tokens, the held-out split, each epoch's batches, packed rows,
and the loss on the answer tokens (all of them, or the spans token-level selection kept)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tskd_lite.errors import TskdError
from tskd_lite.jsonl import read_jsonl
from tskd_lite.recipe import Target, Train
from tskd_lite.target import Formatter


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


def formatter(target_dir: Path, target: Target) -> tuple[Formatter, int]:
    """The Formatter that lays pairs out in the target's chat template (with its tokenizer), and the padding id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Formatter.for_target(tokenizer, target), pad_id


def encode(fmt: Formatter, pairs: list[Pair], max_seq_len: int, log) -> list[Example]:
    """The pairs as token ids and labels (-100 where no loss is carried: the prompt, and with token-level selection
    the answer tokens outside the kept spans); a pair whose prompt alone is too long is skipped, and said so."""
    encoded = [fmt.encode(p, a, max_seq_len, keep) for p, a, keep in pairs]
    examples = [Example(*e) for e in encoded if e is not None]
    if len(encoded) - len(examples):
        log(f"skipped {len(encoded) - len(examples)} pairs whose prompt alone exceeds train.max_seq_len")
    if len(examples) < 2:
        raise TskdError(f"train: need at least 2 usable pairs, the dataset has {len(examples)}")
    return examples


def split(examples: list, val_fraction: float, seed: int) -> tuple[list, list]:
    order = np.random.default_rng([seed, 0]).permutation(len(examples))
    n_val = min(len(examples) - 1, max(1, round(val_fraction * len(examples)))) if val_fraction > 0 else 0
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


def batch_order(n: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The batches of one epoch: a permutation that depends only on (seed, epoch), so a resume replays it."""
    order = np.random.default_rng([seed, 1, epoch]).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def step_batches(train_set: list[Example], step: int, per_epoch: int, cfg: Train) -> list[list[Example]]:
    """The grad_accum batches that optimiser step `step` reads, counted over all epochs' batches."""
    batches = []
    for k in range(step * cfg.grad_accum, (step + 1) * cfg.grad_accum):
        epoch, index = divmod(k, per_epoch)
        batches.append([train_set[i] for i in batch_order(len(train_set), cfg.batch_size, epoch, cfg.seed)[index]])
    return batches


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


def answer_tokens(examples: list[Example]) -> int:
    """The count of tokens that carry the loss in examples: answer_loss's count, known without running the model
    (a label predicts from the token before it, so an example's first never counts)."""
    return sum(sum(label != -100 for label in e.labels[1:]) for e in examples)


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
