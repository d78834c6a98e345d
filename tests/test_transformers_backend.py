"""The transformers backend (backend = "transformers") against llama.cpp on the same weights: the tiny GGUFs
converted to Hugging Face folders (hf_dir, the target's conversion, exact for their f32 weights), a PEFT adapter
made here against its GGUF LoRA (written by `tskd-lite convert`), the same kept pool for a run with teacher and
base on transformers, and one-line errors for the folders a user can get wrong."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SEEDS, recipe_dict, write_recipe
from tinymodels import write_tiny_llama

from tskd_lite import pipeline
from tskd_lite.backends import open_backend
from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.hf import load_hf
from tskd_lite.recipe import ModelSpec, Target, load_recipe
from tskd_lite.target import hf_dir

N_CTX = 512
ANSWERS = ["It boils at 100 degrees.", "Red, blue and yellow", "Eight, as every spider.", "Bonjour, ça va? ü", "84"]
PAIRS = list(zip(SEEDS, ANSWERS, strict=True))
# Measured on the tiny f32 models (this machine, 2 cores): mean |Δ log p| per token 1.2e-4 without an adapter,
# 5e-4 with the PEFT adapter against its GGUF LoRA. The bounds leave a factor of ten for other CPUs' kernels; the
# real SmolLM2 Q4_1 against its own dequantized weights measured 0.036 (docs/own-models.md).
BOUND = 2e-3
ADAPTER_BOUND = 5e-3


def _folder(gguf: Path, tmp_path_factory) -> Path:
    return hf_dir(Target(model=gguf, cache=tmp_path_factory.mktemp("hf") / gguf.stem), log=lambda _: None)


def _peft_adapter(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """A random LoRA on every linear layer (init_lora_weights=False: B is not zero, so the adapter changes the
    model from the start), saved as PEFT saves one."""
    from peft import LoraConfig, get_peft_model

    _, model = load_hf(model_dir, dtype="float32", device="cpu")
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf(tiny, tmp_path_factory) -> dict[str, Path]:
    """The tiny teacher and base as Hugging Face folders, a PEFT adapter for the base, and that adapter written as
    a GGUF LoRA by `tskd-lite convert`."""
    out = {role: _folder(tiny[role], tmp_path_factory) for role in ("teacher", "base")}
    work = tmp_path_factory.mktemp("adapter")
    out["adapter"] = _peft_adapter(out["base"], work / "adapter")
    out["adapter.gguf"] = work / "adapter.gguf"
    result = CliRunner().invoke(
        main, ["convert", str(out["adapter"]), "--base", str(tiny["base"]), "-o", str(out["adapter.gguf"])]
    )
    assert result.exit_code == 0, result.output
    out["convert_output"] = result.output
    return out


def _transformers(model: Path, lora: Path | None = None, scale: float = 1.0, parallel: int = 4):
    spec = ModelSpec(model=model, lora=lora, lora_scale=scale, n_ctx=N_CTX, backend="transformers")
    return open_backend(spec, role="teacher", threads=1, parallel=parallel)


def _llama(model: Path, lora: Path | None = None, scale: float = 1.0):
    return open_backend(ModelSpec(model=model, lora=lora, lora_scale=scale, n_ctx=N_CTX), role="teacher", threads=1)


def _mean_abs_diff(a: list, b: list) -> float:
    return float(np.mean(np.concatenate([np.abs(x.logprobs - y.logprobs) for x, y in zip(a, b, strict=True)])))


def test_text_tokens_and_log_probs_match_llama_cpp_on_the_same_weights(tiny, hf):
    ours, theirs = _transformers(hf["teacher"]), _llama(tiny["teacher"])
    try:
        rendered = [ours.render(p) for p, _ in PAIRS]
        assert rendered == [theirs.render(p) for p, _ in PAIRS] and ours.user_prefix() == theirs.user_prefix()
        for r, (_, answer) in zip(rendered, PAIRS, strict=True):
            assert ours.tokenize_prompt(r) == theirs.tokenize_prompt(r)
            assert ours.tokenize_answer(answer) == theirs.tokenize_answer(answer)
        pairs = [(r, a) for r, (_, a) in zip(rendered, PAIRS, strict=True)]
        mine, reference = ours.score_answers(pairs, byte_ends=True), theirs.score_answers(pairs, byte_ends=True)
        for m, r in zip(mine, reference, strict=True):
            assert m.byte_ends == r.byte_ends and m.n_tokens == r.n_tokens  # "ça", "ü": characters split in bytes
        diff = _mean_abs_diff(mine, reference)
        print(f"transformers vs llama.cpp, same f32 weights: mean |Δ log p| {diff:.2e} per token")
        assert diff <= BOUND
        # a pair's log-probs do not depend on what else is in its batch beyond the last bits (padding)
        alone = [ours.score_answers([pair])[0] for pair in pairs]
        assert _mean_abs_diff(alone, mine) < 1e-4
        assert type(ours).tokenizer_identity(ours.spec) == type(ours).tokenizer_identity(_spec(hf["base"]))
    finally:
        ours.close()
        theirs.close()


def _spec(model: Path, **keys) -> ModelSpec:
    return ModelSpec(model=model, n_ctx=N_CTX, backend="transformers", **keys)


def test_greedy_replies_match_llama_cpp_and_a_seed_fixes_a_sampled_reply(tiny, hf):
    ours, theirs = _transformers(hf["teacher"], parallel=3), _llama(tiny["teacher"])
    try:
        rendered = [ours.render(p) for p in SEEDS]
        greedy = dict(max_tokens=16, temperature=0.0, top_p=1.0, seeds=[0] * len(SEEDS))
        assert ours.generate(rendered, **greedy) == theirs.generate(rendered, **greedy)  # text, count and finish
        sampled = dict(max_tokens=16, temperature=1.0, top_p=0.9)
        first = ours.generate(rendered, **sampled, seeds=[11, 12, 13, 14, 15])
        assert ours.generate(rendered, **sampled, seeds=[11, 12, 13, 14, 15]) == first
        assert len({g.text for g in first}) > 1
        other = ours.generate(rendered, **sampled, seeds=[21, 12, 13, 14, 15])
        assert other[0] != first[0] and other[1:3] == first[1:3]  # another seed, another reply; the group's others
        short = ours.generate(rendered[:1], max_tokens=3, temperature=0.0, top_p=1.0, seeds=[0])
        assert short[0].n_tokens <= 3 and (short[0].finish_reason == "length") == (short[0].n_tokens == 3)
    finally:
        ours.close()
        theirs.close()


def test_a_peft_adapter_matches_its_gguf_lora_from_convert(tiny, hf, tmp_path):
    assert "GGUF LoRA in llama.cpp vs PEFT adapter in transformers: mean |Δ log p|" in hf["convert_output"]
    print(hf["convert_output"])
    diffs = {}
    for scale in (1.0, 0.5):
        ours = _transformers(hf["base"], hf["adapter"], scale)
        theirs = _llama(tiny["base"], hf["adapter.gguf"], scale)
        plain = _transformers(hf["base"])
        try:
            pairs = [(ours.render(p), a) for p, a in PAIRS]
            mine = ours.score_answers(pairs)
            diffs[scale] = _mean_abs_diff(mine, theirs.score_answers(pairs))
            assert _mean_abs_diff(mine, plain.score_answers(pairs)) > 0.1  # the adapter changes the model
        finally:
            for engine in (ours, theirs, plain):
                engine.close()
    print(f"teacher + PEFT adapter vs GGUF + GGUF LoRA: mean |Δ log p| {diffs} per token (by lora_scale)")
    assert max(diffs.values()) <= ADAPTER_BOUND
    # convert refuses to replace a file without --overwrite, and replaces it with it
    args = ["convert", str(hf["adapter"]), "--base", str(tiny["base"]), "-o", str(hf["adapter.gguf"])]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "exists; pass --overwrite" in refused.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


def _kept(db: Path) -> list:
    con = sqlite3.connect(db)
    rows = con.execute(
        "select p.round, p.text, a.text, s.kept, sc.gap from selections s join prompts p on p.id = s.prompt_id "
        "join answers a on a.prompt_id = p.id join scores sc on sc.prompt_id = p.id order by p.round, p.idx"
    ).fetchall()
    con.close()
    return rows


def test_a_run_with_teacher_and_base_on_transformers_keeps_the_in_process_pool(tiny, hf, tmp_path):
    """Templates x entities writes no prompt with a model and the answers are greedy: on the same weights both
    backends must keep the same prompts with the same answers (sampled writing differs: another generator)."""

    def run(name: str, models: dict) -> list:
        raw = recipe_dict(tiny, tmp_path / name / "pool.db")
        raw["seeds"] = {"prompts": ["Where does Ada Lin live?", "What is the job of Bo Kra?"]}
        raw["expand"] = {"strategy": "entities", "entities": ["Ada Lin", "Bo Kra", "Cy Dee"], "rounds": 2}
        raw["respond"] = {"max_answer_tokens": 16, "temperature": 0.0}
        for role, table in models.items():
            raw[role] |= table
        recipe = load_recipe(write_recipe(tmp_path / f"{name}.toml", raw))
        result = pipeline.run_all(recipe, progress=False, log=lambda _: None)
        assert result.status == "done" and result.kept
        return _kept(recipe.output.db)

    local = run("local", {})
    on_transformers = {role: {"model": hf[role], "backend": "transformers"} for role in ("teacher", "base")}
    ours = run("hf", on_transformers)
    assert [row[:4] for row in ours] == [row[:4] for row in local] and len(local) >= 6
    assert max(abs(a[4] - b[4]) for a, b in zip(ours, local, strict=True)) < 1e-3
    # the same recipe resumes: the folders' identities are stable
    run("hf", on_transformers)
    check = CliRunner().invoke(main, ["check", str(tmp_path / "hf.toml")])
    assert check.exit_code == 0 and "(transformers; Hugging Face folder)" in check.output
    assert "gap     per token" in check.output  # teacher and base share a tokenizer


def test_folders_a_user_can_get_wrong_are_one_line(tiny, hf, tmp_path, tmp_path_factory):
    def load(table: dict) -> None:
        raw = recipe_dict(tiny, tmp_path / "r.db")
        raw["teacher"] = {"backend": "transformers", **table}
        load_recipe(write_recipe(tmp_path / "r.toml", raw))

    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(TskdError, match=r"teacher\.model: .*bare is a folder without config\.json"):
        load({"model": bare})
    (bare / "config.json").write_text((hf["teacher"] / "config.json").read_text())
    (bare / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(TskdError, match=r"teacher\.model: .*holds no \.safetensors weights \(pickled"):
        load({"model": bare})
    with pytest.raises(TskdError, match=r'teacher\.model: .*is not a folder .*backend = "llama_cpp"'):
        load({"model": tiny["teacher"]})
    with pytest.raises(TskdError, match=r"teacher\.lora: .*holds no readable adapter_config\.json"):
        load({"model": hf["teacher"], "lora": bare})
    pickled = tmp_path / "pickled-adapter"
    shutil.copytree(hf["adapter"], pickled)
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(TskdError, match=r"teacher\.lora: .*holds no adapter_model\.safetensors"):
        load({"model": hf["teacher"], "lora": pickled})
    # adapters made for another model: narrower, and deeper
    narrow = _folder(write_tiny_llama(tmp_path / "narrow.gguf", seed=6, n_embd=32, n_ff=64), tmp_path_factory)
    narrow_adapter = _peft_adapter(narrow, tmp_path / "narrow-adapter")
    fit = r"does not fit .*: model\.layers\.0\.\S+ maps \d+ to 32 features in the adapter, \d+ to 64 in the model"
    with pytest.raises(TskdError, match=rf"teacher\.lora: .*{fit}"):
        load({"model": hf["teacher"], "lora": narrow_adapter})
    deep = _folder(write_tiny_llama(tmp_path / "deep.gguf", seed=7, n_layer=3), tmp_path_factory)
    with pytest.raises(TskdError, match=r"teacher\.lora: .* adapts model\.layers\.2\.\S+, which .* does not have"):
        load({"model": hf["teacher"], "lora": _peft_adapter(deep, tmp_path / "deep-adapter")})
    args = ["convert", str(narrow_adapter), "--base", str(tiny["base"]), "-o", str(tmp_path / "x.gguf")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "Error: ADAPTER_DIR: " in refused.output and "does not fit" in refused.output
    assert not (tmp_path / "x.gguf").exists()
    # Hugging Face files given to the GGUF backend say which backend takes them
    with pytest.raises(TskdError, match=r'teacher\.model: .* is a folder; a Hugging Face model needs backend = "tra'):
        load({"model": hf["teacher"], "backend": "llama_cpp"})
    with pytest.raises(TskdError, match=r"teacher\.lora: .* is a folder; a PEFT adapter needs .*tskd-lite convert"):
        load({"model": tiny["teacher"], "lora": hf["adapter"], "backend": "llama_cpp"})
    with pytest.raises(TskdError, match=r'teacher\.dtype: only backend = "transformers" takes it'):
        load({"model": tiny["teacher"], "dtype": "nf4", "backend": "llama_cpp"})
    assert json.loads((hf["adapter"] / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_the_bfloat16_and_4_bit_code_paths_run_on_this_machine(hf):
    """dtype = "bfloat16" and "nf4" are for CUDA GPUs (this machine has none): here their code paths run on the CPU
    (bitsandbytes' CPU backend), the adapter kept beside the weights rather than merged. Measured against float32 on
    the tiny random model: bfloat16 0.015 nats per token, nf4 0.19 (4-bit weights of a random model)."""
    reference = _transformers(hf["base"], hf["adapter"])
    pairs = [(reference.render(p), a) for p, a in PAIRS]
    want = reference.score_answers(pairs)
    reference.close()
    for dtype, bound in (("bfloat16", 0.1), ("nf4", 1.0)):
        spec = _spec(hf["base"], lora=hf["adapter"], dtype=dtype)
        engine = open_backend(spec, role="teacher", threads=1, parallel=4)
        try:
            assert type(engine.model).__name__ == "PeftModel"  # not merged: merging would round the update away
            got = engine.score_answers(pairs)
            assert all(np.isfinite(s.logprobs).all() for s in got) and _mean_abs_diff(got, want) < bound
            (reply,) = engine.generate([pairs[0][0]], max_tokens=4, temperature=0.8, top_p=0.9, seeds=[3])
            assert 1 <= reply.n_tokens <= 4 or reply.finish_reason == "stop"
        finally:
            engine.close()
