"""Writing new prompts few-shot from kept ones: example sampling, the instruction, and cleaning the reply."""

from __future__ import annotations

import hashlib
import re

import numpy as np

_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d+[.)]|(?:new\s+)?question\s*\d*\s*:)\s*", re.IGNORECASE)


def item_seed(run_seed: int, *parts: object) -> int:
    """A 32-bit seed for one item of work that depends only on the run seed and the item's identity."""
    key = ":".join(str(p) for p in (run_seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def pick_examples(pool: list[dict], k: int, seed: int) -> list[dict]:
    """k examples drawn without replacement from the few-shot pool (seeds and kept prompts)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[i] for i in sorted(chosen)]


def instruction(template: str, examples: list[dict]) -> str:
    # str.replace, not str.format: a user's instruction may contain other braces (code, JSON).
    return template.replace("{examples}", "\n".join(f"- {ex['text']}" for ex in examples))


def clean(reply: str) -> str:
    """The first line of the reply with any list marker or 'Question:' label removed.

    One line, not a paragraph: small generators asked for one prompt go on with more, one per line, often the
    same line again, and every such line would otherwise be glued into one long prompt.
    """
    lines = [line for line in reply.strip().splitlines() if _LIST_MARKER.sub("", line).strip()]
    text = _LIST_MARKER.sub("", lines[0], count=1).strip() if lines else ""
    return text.strip('"').strip()


_NUMBER = r"\w*\d[\w.:/-]*"


def keeps_names(original: str, rewrite: str) -> bool:
    """Whether a rewrite keeps every name (a capitalised word after the first) and number of the original.

    A paraphrase that drops or alters what the question is about asks about something else, and small generators
    often do that (seen by hand: 'What does Brentei the Imam do?' for 'What does Brentei Theimdem do?').
    """
    words = [_bare(w) for w in original.split()]
    wanted = {w for i, w in enumerate(words) if w and ((i > 0 and w[0].isupper()) or re.fullmatch(_NUMBER, w))}
    return wanted <= {_bare(w) for w in rewrite.split()}


def _bare(word: str) -> str:
    """A word without surrounding punctuation or a possessive 's."""
    return word.strip("?.!,;:'\"()").removesuffix("'s").removesuffix("’s")
