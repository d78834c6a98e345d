"""Replay: the target's own answers to general prompts, trained on beside the distilled pairs.

Fine-tuning a small model on a narrow dataset pulls all of its behaviour toward that dataset, and it can lose what
it knew before (the transfer benchmark counts the held-out facts the target had right before and wrong after).
Rehearsing its own earlier answers, written by the untouched target before training, is a data-free guard against
that: the loss on them starts near its minimum, so they cost the distilled pairs little and pull back only where
training drifts from what the target did. train.replay sets how many per training pair (0: none), train.replay_min
how many at least; the held-out split draws from them too, so early stopping also watches them.

The answers are written once into the training folder (replay.jsonl, replaced atomically) and read back on a
resume, so that a resumed training sees the same tokens as an uninterrupted one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tskd_lite import atomic
from tskd_lite.jsonl import read_jsonl, read_lines
from tskd_lite.recipe import Target, Train
from tskd_lite.train.data import Pair
from tskd_lite.train.general_prompts import GENERAL_PROMPTS

REPLAY_FILE = "replay.jsonl"
MAX_ANSWER_TOKENS = 48  # a replayed answer's length: its opening carries the habit training could change


def replay_prompts(cfg: Train) -> list[str]:
    """The prompts replay may ask: train.replay_prompts' lines, else the bundled general ones."""
    if cfg.replay_prompts is None:
        return list(GENERAL_PROMPTS)
    return [line.strip() for line in read_lines(cfg.replay_prompts, "train.replay_prompts") if line.strip()]


def replay_count(cfg: Train, n_pairs: int, available: int) -> int:
    """How many answers a training of n_pairs pairs replays: train.replay per pair, at least train.replay_min, at
    most the prompts there are; none where train.replay is 0."""
    if cfg.replay == 0:
        return 0
    return min(available, max(cfg.replay_min, round(cfg.replay * n_pairs)))


def replay_pairs(
    target_dir: Path, target: Target, cfg: Train, n_pairs: int, out: Path, *, progress: bool, log
) -> list[Pair]:
    """The replayed (prompt, answer, None) pairs for a training of n_pairs pairs: read from out/replay.jsonl when it
    holds answers to the same prompts, else written by the untouched target and saved there first."""
    if cfg.replay == 0:
        return []
    prompts = replay_prompts(cfg)
    n = replay_count(cfg, n_pairs, len(prompts))
    chosen = [prompts[i] for i in sorted(random.Random(cfg.seed).sample(range(len(prompts)), n))]
    path = out / REPLAY_FILE
    if path.is_file():
        rows = [row for _, row in read_jsonl(path, str(path))]
        if [row.get("prompt") for row in rows] == chosen:
            return [(row["prompt"], row["answer"], None) for row in rows if row["answer"]]
    log(f"replay: the target answers {n} general prompts itself before training (once, kept in {path})")
    answers = _answers(target_dir, target, chosen, progress)
    # every prompt asked is written, an empty reply too, so that the file matches `chosen` and a resume reads it
    asked = list(zip(chosen, answers, strict=True))
    atomic.write_text(path, "".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in asked))
    return [(p, a, None) for p, a in asked if a]


def _answers(target_dir: Path, target: Target, prompts: list[str], progress: bool) -> list[str]:
    """The untouched target's greedy replies, as evaluation generates them (fp32: the weights training starts from)."""
    from tskd_lite.target import Formatter, greedy_answers, load_fp32

    tokenizer, model = load_fp32(target_dir)
    fmt = Formatter.for_target(tokenizer, target)
    replies = greedy_answers(model, tokenizer, fmt, prompts, MAX_ANSWER_TOKENS, progress=progress, desc="replay")
    return [reply.strip() for reply in replies]
