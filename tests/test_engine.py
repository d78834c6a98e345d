"""llama.cpp log-probs against transformers on the same GGUF weights, and seeded generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tinymodels import write_tiny_lora
from transformers import AutoModelForCausalLM

from tskd_lite.backends import open_backend
from tskd_lite.errors import TskdError
from tskd_lite.recipe import ModelSpec

PROMPT = "What is 12 times 7?"
ANSWER = "Eighty-four: 12 x 7 = 84, because 10 x 7 = 70 and 2 x 7 = 14."
# f32 weights on both sides; llama.cpp and torch differ only in kernel order of summation.
ATOL = 2e-3


def _hf_logprobs(gguf_path, ids, n_prompt, lora=None, lora_scale=1.0):
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    if lora is not None:
        weights, alpha = lora
        for name, (a, b) in weights.items():
            layer, kind = int(name.split(".")[1]), name.split(".")[2]
            module = {"ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "attn_v": "self_attn.v_proj"}[kind]
            linear = model.model.layers[layer].get_submodule(module)
            with torch.no_grad():
                linear.weight += lora_scale * alpha / a.shape[0] * torch.from_numpy(b @ a)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    return np.array([lp[i - 1, ids[i]].item() for i in range(n_prompt, len(ids))])


def _ids(engine):
    rendered = engine.render(PROMPT)
    prompt = engine.tokenize_prompt(rendered)
    return rendered, prompt, prompt + engine.tokenize_answer(ANSWER)


def test_answer_logprobs_match_transformers(tiny):
    engine = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=512), role="teacher", threads=1)
    rendered, prompt, ids = _ids(engine)
    assert rendered.startswith("<|im_start|>user\nWhat is 12 times 7?<|im_end|>\n<|im_start|>assistant\n")
    lp = engine.answer_logprobs(rendered, ANSWER)
    assert len(lp) == len(ids) - len(prompt) == len(ANSWER.encode())  # byte-level vocabulary, no merges
    ref = _hf_logprobs(tiny["teacher"], ids, len(prompt))
    np.testing.assert_allclose(lp, ref, atol=ATOL)
    assert np.std(lp) > 0.1  # a real spread of values, not a constant that would match anything


PROMPTS = [
    "What is 12 times 7?",
    "Name a colour.",
    "Why is the sky blue?",
    "Count to five.",
    "Say hello.",
    "What is a prime number?",
    "Spell 'cat'.",
    "Give me a word that rhymes with moon.",
    "2 + 2 = ?",
]


def test_batched_scoring_matches_one_at_a_time(tiny):
    batched = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=256), role="teacher", threads=1, parallel=4)
    single = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=256), role="teacher", threads=1, parallel=1)
    pairs = [
        (batched.tokenize_prompt(batched.render(p)), batched.tokenize_answer(ANSWER[: 10 + 5 * i]))
        for i, p in enumerate(PROMPTS)
    ]
    together = batched.score(pairs)  # 9 pairs: groups of 4, 4 and 1
    for pair, lp in zip(pairs, together, strict=True):
        assert len(lp) == len(pair[1])
        np.testing.assert_allclose(lp, single.score([pair])[0], atol=1e-4)
    # <|im_start|> and the 5 bytes of "user\n" open every prompt here: 6 tokens decoded once per group of 4, so
    # 3 pairs in each of the two full groups reuse them (the last group has one pair and shares nothing).
    requested = sum(len(p) + len(a) for p, a in pairs)
    assert single.decoded == requested
    assert batched.decoded == requested - 6 * 3 * 2


def test_batched_generation_matches_one_at_a_time(tiny):
    batched = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=256), role="teacher", threads=1, parallel=4)
    single = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=256), role="teacher", threads=1, parallel=1)
    rendered = [batched.render(p) for p in PROMPTS]
    seeds = list(range(100, 100 + len(PROMPTS)))
    for temperature in (0.0, 1.0):
        kw = {"max_tokens": 16, "temperature": temperature, "top_p": 0.95}
        together = batched.generate(rendered, seeds=seeds, **kw)
        apart = [single.generate([r], seeds=[s], **kw)[0] for r, s in zip(rendered, seeds, strict=True)]
        # Batched and single decoding agree to ~1e-5 in the logits (see the scoring test); a random tiny model has
        # near-ties where that can flip one token late in a reply, so one reply in nine may differ.
        same = sum(a == b for a, b in zip(together, apart, strict=True))
        assert same >= len(PROMPTS) - 1, (temperature, same)
    assert len({g.text for g in together}) > 5  # sampled replies differ from prompt to prompt


def test_gguf_lora_adapter_is_applied_like_a_merged_delta(tiny, tmp_path):
    n_embd, n_ff = 64, 128
    lora_path = tmp_path / "adapter.gguf"
    weights = write_tiny_lora(
        lora_path,
        {
            "blk.0.ffn_up.weight": (n_ff, n_embd),
            "blk.1.ffn_down.weight": (n_embd, n_ff),
            "blk.1.attn_v.weight": (32, n_embd),
        },
        alpha=8.0,
        seed=5,
    )
    spec = ModelSpec(model=tiny["base"], lora=lora_path, lora_scale=0.5, n_ctx=512)
    engine = open_backend(spec, role="teacher", threads=1)
    plain = open_backend(ModelSpec(model=tiny["base"], n_ctx=512), role="base", threads=1)
    rendered, prompt, ids = _ids(engine)
    lp = engine.answer_logprobs(rendered, ANSWER)
    assert np.abs(lp - plain.answer_logprobs(rendered, ANSWER)).max() > 0.05  # the adapter changes the model
    ref = _hf_logprobs(tiny["base"], ids, len(prompt), lora=(weights, 8.0), lora_scale=0.5)
    np.testing.assert_allclose(lp, ref, atol=ATOL)


def test_generation_is_reproducible_from_its_seed(tiny):
    engine = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=512), role="teacher", threads=1)
    rendered = engine.render(PROMPT)
    kw = {"max_tokens": 20, "temperature": 1.0, "top_p": 0.95}
    (a,) = engine.generate([rendered], seeds=[11], **kw)
    engine.generate([engine.render("something else entirely")], seeds=[3], **kw)  # other state in the cache
    (b,) = engine.generate([rendered], seeds=[11], **kw)
    (c,) = engine.generate([rendered], seeds=[12], **kw)
    assert a == b
    assert a.text != c.text
    assert a.n_tokens == 20 and a.finish_reason == "length"
    greedy = engine.generate([rendered] * 2, seeds=[1, 2], max_tokens=20, temperature=0.0, top_p=1.0)
    assert greedy[0] == greedy[1]


def test_model_without_chat_template_fails_clearly(tiny):
    with pytest.raises(TskdError, match=r"teacher.model: .* has no chat template .* set teacher.chat_template"):
        open_backend(ModelSpec(model=tiny["notemplate"]), role="teacher").render("hi")
    engine = open_backend(
        ModelSpec(model=tiny["notemplate"], chat_template="Q: {{ messages[0]['content'] }}\nA:"), role="teacher"
    )
    assert engine.render("hi") == "Q: hi\nA:"


def test_context_overflow_is_a_clear_error(tiny):
    engine = open_backend(ModelSpec(model=tiny["teacher"], n_ctx=64), role="base", threads=1)
    with pytest.raises(TskdError, match="base.n_ctx"):
        engine.answer_logprobs(engine.render("x" * 80), "y")
