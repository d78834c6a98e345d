"""Contrast: how much of the teacher's answer the names and numbers of its prompt explain.

After contrastive and context-aware decoding: each name (a run of capitalised words after the first word) and each
number of the prompt is swapped for an invented one, in the prompt and the answer alike, and the teacher scores the
swapped answer given the swapped prompt. The contrast is the teacher's log-prob of the answer's other tokens (those
outside the swapped spans) given the real prompt minus given the swapped one, summed over those tokens and averaged
over the swaps. A teacher that knows a fact about a name predicts the fact from the name: likely with the real name,
unlikely with an invented one. A teacher that guesses, or echoes a statement it was handed, predicts the same words
whatever the name: a contrast near zero, however large its perplexity gap over the base.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"[^\W\d_][\w'’-]*|\d+")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def key_spans(prompt: str) -> list[str]:
    """The prompt's names (runs of capitalised words of two letters or more, after its first word) and numbers."""
    words = list(_WORD.finditer(prompt))
    keys: list[str] = []
    run: list[re.Match] = []

    def close() -> None:
        if run:
            keys.append(prompt[run[0].start() : run[-1].end()])
            run.clear()

    for i, w in enumerate(words):
        text = w.group()
        if text.isdigit():
            close()
            keys.append(text)
        elif i > 0 and text[0].isupper() and len(text) > 1:
            if run and prompt[run[-1].end() : w.start()] != " ":
                close()
            run.append(w)
        else:
            close()
    close()
    return list(dict.fromkeys(keys))


def invent(key: str, rng: np.random.Generator) -> str:
    """A stand-in of the same shape: digits for a number (same length), made-up capitalised words for a name."""
    if key.isdigit():
        while True:
            out = "".join(str(d) for d in rng.integers(0, 10, len(key)))
            if out != key and (len(key) == 1 or out[0] != "0"):
                return out
    words = []
    for word in key.split(" "):
        n = max(1, round(len(word) / 2))
        letters = "".join(
            (_CONSONANTS[rng.integers(len(_CONSONANTS))] if j % 2 == 0 else _VOWELS[rng.integers(len(_VOWELS))])
            for j in range(n * 2)
        )
        words.append(letters.capitalize())
    return " ".join(words)


def swap(text: str, mapping: dict[str, str]) -> tuple[str, list[tuple[int, int]], list[tuple[int, int]]]:
    """text with every whole-word occurrence of mapping's keys replaced at once; the byte spans of those
    occurrences in the original and in the new text."""
    if not mapping:
        return text, [], []
    pattern = re.compile(
        r"(?<!\w)(" + "|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r")(?!\w)"
    )
    out, old_spans, new_spans = [], [], []
    last, old_b, new_b = 0, 0, 0
    for m in pattern.finditer(text):
        between = text[last : m.start()].encode()
        old_b += len(between)
        new_b += len(between)
        out += [text[last : m.start()], mapping[m.group()]]
        old_len, new_len = len(m.group().encode()), len(mapping[m.group()].encode())
        old_spans.append((old_b, old_b + old_len))
        new_spans.append((new_b, new_b + new_len))
        old_b += old_len
        new_b += new_len
        last = m.end()
    out.append(text[last:])
    return "".join(out), old_spans, new_spans


def outside(byte_ends: Sequence[int], spans: list[tuple[int, int]], logprobs: Sequence[float]) -> dict:
    """{(start, end) in coordinates where each swapped span counts as one byte: log-prob} for the tokens that lie
    wholly outside the swapped spans, so that the same words of two versions of an answer share a key."""
    out = {}
    starts = [0, *byte_ends[:-1]]
    for s, e, lp in zip(starts, byte_ends, logprobs, strict=True):
        if any(s < b and a < e for a, b in spans):
            continue
        shift = sum(b - a - 1 for a, b in spans if b <= s)
        out[(s - shift, e - shift)] = lp
    return out


def plan(prompt: str, answer: str, seed: int, k: int) -> list[tuple[str, str, list, list]]:
    """k swapped versions (prompt, answer, spans in the original answer, spans in the swapped answer); none when
    the prompt has no name or number to swap."""
    keys = key_spans(prompt)
    if not keys:
        return []
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        mapping = {key: invent(key, rng) for key in keys}
        new_prompt, _, _ = swap(prompt, mapping)
        new_answer, old_spans, new_spans = swap(answer, mapping)
        out.append((new_prompt, new_answer, old_spans, new_spans))
    return out


def contrast(
    real: tuple[Sequence[float], Sequence[int]], swapped: list[tuple[Sequence[float], Sequence[int], list, list]]
) -> float | None:
    """Mean over the swaps of the summed log-prob difference on the tokens both versions share; None when no
    token is shared (the answer is nothing but the swapped names)."""
    values = []
    for lps, ends, old_spans, new_spans in swapped:
        a = outside(real[1], old_spans, real[0])
        b = outside(ends, new_spans, lps)
        shared = a.keys() & b.keys()
        if shared:
            values.append(sum(a[t] - b[t] for t in shared))
    return float(np.mean(values)) if values else None
