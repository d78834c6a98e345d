"""Prompt writing helpers: the name-and-number check that paraphrase augmentation applies to every rewrite."""

from __future__ import annotations

import pytest

from tskd_lite.expand import keeps_names


@pytest.mark.parametrize(
    ("original", "rewrite", "kept"),
    [
        ("What does Brentei Theimdem do for a living?", "What is the job of Brentei Theimdem?", True),
        ("What does Brentei Theimdem do for a living?", "What does Brentei the Imam do?", False),  # name altered
        ("In which town is Ada Lin's home?", "Where is the home of Ada Lin?", True),  # possessive
        ("Where does Ada Lin live?", "Where does Ada live?", False),  # name cut short
        ("Convert 2001-01-05 to text", "Write 2001-01-05 in words", True),
        ("Convert 2001-01-05 to text", "Write 2001-01-06 in words", False),  # number changed
        ("What is 12 times 7?", "How much is 12 multiplied by 7?", True),
        ("Name three primary colours.", "List the primary colours.", True),  # the first word is not a name
    ],
)
def test_a_rewrite_must_keep_the_names_and_numbers(original, rewrite, kept):
    assert keeps_names(original, rewrite) is kept
