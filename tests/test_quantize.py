"""Re-encoding a GGUF's weights: the copy loads, scores like the original within the new type's rounding."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from tinymodels import write_tiny_lora

from tskd_lite.backends import open_backend
from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.quantize import requantize
from tskd_lite.recipe import ModelSpec

ANSWER = "Eighty-four: 12 x 7 = 84, because 10 x 7 = 70 and 2 x 7 = 14."


def _logprobs(path, lora=None):
    engine = open_backend(ModelSpec(model=path, lora=lora, n_ctx=256), role="teacher", threads=1, parallel=1)
    lp = engine.answer_logprobs(engine.render("What is 12 times 7?"), ANSWER)
    engine.close()
    return lp


def test_requantized_copy_scores_like_the_original(tiny, tmp_path):
    result = CliRunner().invoke(main, ["requantize", str(tiny["teacher"]), str(tmp_path / "q8.gguf")])
    assert result.exit_code == 0, result.output
    assert "q8_0" in result.output
    q8 = tmp_path / "q8.gguf"
    assert q8.stat().st_size < tiny["teacher"].stat().st_size / 2  # f32 weights became 8-bit ones
    assert not list(tmp_path.glob("*.part"))
    original, copy = _logprobs(tiny["teacher"]), _logprobs(q8)
    diff = np.abs(original - copy)
    # Q8_0 rounding moves log-probs a little (a random model amplifies it); not at all would mean no re-encoding
    assert diff.max() > 0 and diff.mean() < 0.05
    q4 = requantize(tiny["teacher"], tmp_path / "q4.gguf", "q4_0")
    assert np.abs(original - _logprobs(q4)).mean() > diff.mean()  # 4 bits round more coarsely than 8
    # A teacher's LoRA, made for the original, applies to the copy as it does to the original.
    lora = tmp_path / "adapter.gguf"
    write_tiny_lora(lora, {"blk.0.ffn_up.weight": (128, 64), "blk.1.attn_v.weight": (32, 64)}, alpha=8.0, seed=5)
    adapted, adapted_copy = _logprobs(tiny["teacher"], lora), _logprobs(q8, lora)
    assert np.abs(adapted - original).mean() > 0.05
    assert np.abs(adapted_copy - adapted).mean() < 0.05


def test_requantize_errors_are_one_line(tiny, tmp_path):
    with pytest.raises(TskdError, match="--type: expected one of q8_0, q4_0, f16, got 'q3_k'"):
        requantize(tiny["teacher"], tmp_path / "x.gguf", "q3_k")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny["teacher"].read_bytes()[:-1000])  # the last tensor's data cut short
    result = CliRunner().invoke(main, ["requantize", str(broken), str(tmp_path / "y.gguf")])
    assert result.exit_code == 1
    message = f"Error: model: {broken} is truncated (tensor output.weight ends past the end of the file)\n"
    assert result.output == message
    assert not (tmp_path / "y.gguf").exists()
