"""Agreement: whether the teacher says the same thing again when it answers the prompt by sampling.

After SelfCheckGPT (Manakul et al. 2023): a model that knows a fact states it in most of its samples; one that
guesses states a different value each time. The greedy answer's claims are the words it adds to the prompt that
carry a fact: its names and numbers (capitalised words and digits the prompt does not contain), or where it has
none, its content words. The agreement is the share of those claims a sample repeats, averaged over the samples.
A perplexity gap cannot tell a confident guess from a fact (both are likelier under the teacher than the base);
the samples can, where the teacher's guesses scatter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
# words that start a sentence or stand for a name without being a claim of their own
_STOP = frozenset(
    """a an the and or but of in on at to for from by with as is are was were be been it its this that these those
    he she they his her their them we our you your i my yes no not there here what which who whom whose where when
    how why does do did has have had also than then so such into onto about over under""".split()
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def claims(prompt: str, answer: str) -> list[str]:
    """The answer's fact-carrying words (lower-cased, in order, once each) that the prompt does not contain: its
    names and numbers, or its content words where it has no name or number of its own."""
    asked = {w.lower() for w in _words(prompt)}
    new = [w for w in _words(answer) if w.lower() not in asked and w.lower() not in _STOP]
    names = [w for w in new if w[0].isupper() or w[0].isdigit()]
    chosen = names or [w for w in new if len(w) > 2]
    return list(dict.fromkeys(w.lower() for w in chosen))


def agreement(prompt: str, answer: str, samples: Sequence[str]) -> float | None:
    """The mean share of the answer's claims each sample repeats (0 to 1); None where the answer claims nothing
    beyond the prompt, or no sample was drawn."""
    said = claims(prompt, answer)
    if not said or not samples:
        return None
    shares = []
    for sample in samples:
        words = {w.lower() for w in _words(sample)}
        shares.append(sum(c in words for c in said) / len(said))
    return sum(shares) / len(shares)
