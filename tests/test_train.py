"""Training and evaluation of the target on tiny models: masking, learning, adapters, GGUF export, resume."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import recipe_dict, write_recipe

from tskd_lite import pipeline
from tskd_lite.errors import TskdError
from tskd_lite.recipe import Target, load_recipe
from tskd_lite.target import Formatter, hf_dir
from tskd_lite.train import read_pairs, train

PAIRS = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", None) for a in range(4) for b in range(3)]


def _recipe(tiny, target_gguf, tmp_path, **train):
    raw = recipe_dict(tiny, tmp_path / "run" / "pool.db")
    raw["target"] = {"model": target_gguf, "cache": tmp_path.parent / (tmp_path.name + "-target.hf")}
    raw["train"] = {
        "rank": 4,
        "alpha": 8,
        "epochs": 4,
        "batch_size": 4,
        "max_seq_len": 96,
        "learning_rate": 1e-2,
        "dropout": 0.0,
        "replay": 0.0,  # these tests count steps and pairs; tests/test_replay.py turns it on
        **train,
    }
    return load_recipe(write_recipe(tmp_path / "r.toml", raw))


def _train(recipe):
    return train(
        recipe.target, recipe.train, recipe.output.run_dir / "train", PAIRS, progress=False, log=lambda _: None
    )


def test_answer_only_masking_on_a_hand_built_example(target_gguf, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir(Target(model=target_gguf, cache=tmp_path / "hf"), log=lambda _: None))
    fmt = Formatter.for_target(tok, Target(model=target_gguf))
    ids, labels = fmt.encode("Hi?", "Yo.", max_len=64)
    prompt = "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert tok.decode(ids[:n_prompt]) == prompt
    assert labels[:n_prompt] == [-100] * n_prompt
    assert tok.decode(labels[n_prompt:]) == "Yo.<|im_end|>\n"  # the answer and its end-of-turn carry the loss
    plain = Formatter(tok, None)
    ids, labels = plain.encode("Hi?", "Yo.", max_len=64)
    assert tok.decode(ids) == "Question: Hi?\nAnswer: Yo.<|im_end|>"
    assert tok.decode([t for t in labels if t != -100]) == " Yo.<|im_end|>"
    assert plain.encode("x" * 100, "y", max_len=64) is None
    _, labels = fmt.encode("Hi?", "Yo.", max_len=64, template_loss=False)  # evaluation scores the answer alone
    assert tok.decode([t for t in labels if t != -100]) == "Yo."


def test_training_lowers_the_loss_and_exports_adapters(tiny, target_gguf, tmp_path):
    recipe = _recipe(tiny, target_gguf, tmp_path)
    result = _train(recipe)
    losses = [p["loss"] for p in result.curve]
    assert result.steps == 4 * 3 and result.n_train + result.n_val == len(PAIRS) and result.n_val == 1
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    vals = [p["val_loss"] for p in result.curve if p.get("val_loss") is not None]
    assert len(vals) == 4  # one per epoch

    # the saved PEFT adapter reloads to the same function as the merged safetensors model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(hf_dir(recipe.target), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, result.out_dir / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(result.out_dir / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([[5, 80, 33, 101, 7, 9]])
    with torch.no_grad():
        a, m = adapted(ids).logits, merged(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(hf_dir(recipe.target), dtype=torch.float32)(ids).logits
    assert torch.allclose(a, m, atol=1e-4)
    assert (a - plain).abs().max() > 1e-2  # training changed the model

    # the GGUF LoRA (all linear layers, llama's permuted Q and K included) agrees in llama.cpp
    assert result.gguf_adapter.is_file()
    assert result.gguf_check["tokens"] > 20 and result.gguf_check["max_abs_diff"] < 2e-3


def test_qlora_code_path_runs_on_this_machine(tiny, target_gguf, tmp_path, capsys):
    recipe = _recipe(tiny, target_gguf, tmp_path, quantize="nf4", epochs=1)
    try:
        result = _train(recipe)
    except (RuntimeError, NotImplementedError) as e:  # a bitsandbytes build without a CPU backend
        with capsys.disabled():
            print(f"\nQLoRA path skipped: bitsandbytes cannot run NF4 here ({e})")
        pytest.skip(f"bitsandbytes NF4 unavailable: {e}")
    assert result.mode.startswith("QLoRA (NF4")
    assert all(np.isfinite(p["loss"]) for p in result.curve) and result.steps == 3
    assert (result.out_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_killed_training_resumes_from_its_checkpoint(tiny, target_gguf, tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "killed").mkdir()
    clean = _recipe(tiny, target_gguf, tmp_path / "clean", epochs=6, checkpoint_every=2)
    killed = _recipe(tiny, target_gguf, tmp_path / "killed", epochs=6, checkpoint_every=2)
    hf_dir(clean.target)  # convert once up front so the subprocess goes straight to training
    hf_dir(killed.target)
    for r in (clean, killed):
        r.output.export_path.parent.mkdir(parents=True)
        r.output.export_path.write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}) + "\n"
                for p, a, _ in PAIRS
            )
        )
    reference = pipeline.train_target(clean, progress=False, log=lambda _: None)

    cmd = [sys.executable, "-m", "tskd_lite", "train", "--quiet", str(killed.path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = killed.output.run_dir / "train" / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        try:
            step = json.loads(state.read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-swap
            step = 0
        if step >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before the kill; nothing was interrupted"
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming training from the checkpoint at step" in resumed.stdout
    result = json.loads((killed.output.run_dir / "train" / "train.json").read_text())
    ref_losses = [p["loss"] for p in reference.curve]
    np.testing.assert_allclose([p["loss"] for p in result["curve"]], ref_losses, rtol=1e-4)

    # Ctrl-C: the step in progress finishes and is saved, the message says so, and the resume loses no step
    shutil.rmtree(killed.output.run_dir / "train")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not state.is_file():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate()[0]
    assert proc.returncode == 130, output
    saved = re.search(r"training saved at step (\d+)", output)
    assert saved and "Interrupted:" in output and "Traceback" not in output, output
    assert json.loads(state.read_text())["step"] == int(saved.group(1))
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    assert f"resuming training from the checkpoint at step {saved.group(1)}" in resumed.stdout
    result = json.loads((killed.output.run_dir / "train" / "train.json").read_text())
    np.testing.assert_allclose([p["loss"] for p in result["curve"]], ref_losses, rtol=1e-4)


def test_read_pairs_reads_both_export_formats(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]})
        + "\n"
        + json.dumps({"instruction": "Q2", "input": "ctx", "output": "A2"})
        + "\n"
    )
    assert read_pairs(path) == [("Q1", "A1", None), ("Q2\n\nctx", "A2", None)]


def test_top_token_spans_on_hand_numbers():
    from tskd_lite.select import top_token_spans

    # lifts: 0.1, 2.0, -1.0, 1.5 over tokens ending at bytes 3, 5, 9, 12
    spans = top_token_spans([-1.0, -0.5, -3.0, -0.5], [-1.1, -2.5, -2.0, -2.0], [3, 5, 9, 12], 0.5)
    assert spans == [(3, 5), (9, 12)]
    assert top_token_spans([-1.0], [-2.0], [4], 0.01) == [(0, 4)]  # at least one token per answer


def test_token_selection_masks_answer_tokens_outside_the_spans(target_gguf, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir(Target(model=target_gguf, cache=tmp_path / "hf"), log=lambda _: None))
    fmt = Formatter.for_target(tok, Target(model=target_gguf))
    full_ids, full_labels = fmt.encode("Hi?", "abcdef", max_len=64)
    ids, labels = fmt.encode("Hi?", "abcdef", max_len=64, keep=[(1, 3)])
    assert ids == full_ids
    carried = tok.decode([t for t in labels if t != -100])
    assert carried == "bc<|im_end|>\n"  # byte-level tokens: b and c, then the end of turn
    assert sum(t != -100 for t in full_labels) == len("abcdef") + len(tok("<|im_end|>\n")["input_ids"])


def test_token_level_selection_trains_from_the_store(tiny, target_gguf, tmp_path):
    recipe = _recipe(tiny, target_gguf, tmp_path, token_top_fraction=0.3, epochs=1)
    pipeline.run(recipe, progress=False, log=lambda _: None)
    logs = []
    result = pipeline.train_target(recipe, progress=False, log=logs.append)
    assert any("token-level selection" in line for line in logs)
    (tmp_path / "full").mkdir()
    full = _recipe(tiny, target_gguf, tmp_path / "full", epochs=1)
    pipeline.run(full, progress=False, log=lambda _: None)
    everything = pipeline.train_target(full, progress=False, log=lambda _: None)
    # the same pairs and steps, but roughly 30% of the answer tokens carry the loss
    assert result.steps == everything.steps
    assert 0.2 < result.answer_tokens / everything.answer_tokens < 0.6


def test_packed_answer_only_logits_give_the_padded_full_model_loss(target_gguf, tmp_path):
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tskd_lite.train import Example, answer_loss, collate, pack

    model_dir = hf_dir(Target(model=target_gguf, cache=tmp_path / "hf"), log=lambda _: None)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    fmt = Formatter.for_target(tok, Target(model=target_gguf))
    # five of 52 tokens and one of 115, so that rows as wide as the long one hold two short ones
    long = (
        "What is 3 plus 2? And what is 2 plus 3?",
        "3 plus 2 is 5, and 2 plus 3 is 5 too: the order of a sum is free.",
    )
    examples = [Example(*fmt.encode(p, a, 160)) for p, a, _ in [*PAIRS[:5], (*long, None)]]
    packed_ids, _, positions = pack(examples, 0)
    assert packed_ids.shape[0] < len(examples)
    assert (positions[:, 1:] == 0).any()  # some row holds a second example, starting again at position 0
    lean, n = answer_loss(model, examples, 0, "cpu")
    ids, labels, mask = collate(examples, 0)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    full = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert n == int((labels[:, 1:] != -100).sum())
    assert lean.item() == pytest.approx(full.item(), abs=1e-5)


def test_make_teacher_learns_its_data_and_loads_in_llama_cpp(tiny, tmp_path):
    from click.testing import CliRunner

    from tskd_lite.backends import open_backend
    from tskd_lite.cli import main
    from tskd_lite.recipe import ModelSpec

    data = tmp_path / "private.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}) + "\n"
            for p, a, _ in PAIRS
        )
    )
    base = tiny["base"]
    out = tmp_path / "teacher"
    result = CliRunner().invoke(
        main,
        [
            "make-teacher",
            str(data),
            "--base",
            str(base),
            "--out",
            str(out),
            "--epochs",
            "6",
            "--rank",
            "4",
            "--lr",
            "1e-2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"teacher.lora = {out / 'adapter.gguf'}" in result.output
    teacher = open_backend(ModelSpec(model=base, lora=out / "adapter.gguf", n_ctx=256), role="teacher", parallel=4)
    plain = open_backend(ModelSpec(model=base, n_ctx=256), role="base", parallel=4)
    pairs = [(teacher.tokenize_prompt(teacher.render(p)), teacher.tokenize_answer(a)) for p, a, _ in PAIRS]
    gain = np.mean([t.mean() - b.mean() for t, b in zip(teacher.score(pairs), plain.score(pairs), strict=True)])
    assert gain > 0.5  # nats per token: the teacher now finds its private answers far likelier than the base does


def test_make_teacher_rejects_bad_data(tiny, tmp_path):
    from click.testing import CliRunner

    from tskd_lite.cli import main

    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = CliRunner().invoke(
        main, ["make-teacher", str(data), "--base", str(tiny["base"]), "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: dataset: {data}:1: expected a chat record (user and assistant messages) or an "
        "alpaca record (instruction, output), with non-empty text"
    )


def test_a_hugging_face_folder_target_trains_without_gguf_export(tiny, target_gguf, tmp_path):
    folder = hf_dir(Target(model=target_gguf, cache=tmp_path / "folder"), log=lambda _: None)
    raw = recipe_dict(tiny, tmp_path / "run" / "pool.db")
    raw["target"] = {"model": folder}
    raw["train"] = {"rank": 4, "epochs": 1, "batch_size": 4, "max_seq_len": 96, "replay": 0.0}
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", raw))
    result = _train(recipe)
    assert result.steps == 3 and (result.out_dir / "merged" / "config.json").is_file()
    assert result.gguf_adapter is None and result.gguf_check is None
    # a folder whose weights are pickled (.bin) only is refused at load: nothing is unpickled
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    raw["target"] = {"model": pickled}
    with pytest.raises(TskdError, match=r"target.model: .*pickled\b.*holds no .safetensors weights"):
        load_recipe(write_recipe(tmp_path / "pickled.toml", raw))


def test_conversion_and_training_make_no_network_call(tiny, target_gguf, tmp_path, monkeypatch):
    """Offline by design: with every socket connection made to fail, a GGUF target is converted, trained, merged
    and its adapter checked in llama.cpp."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network call was attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    recipe = _recipe(tiny, target_gguf, tmp_path, epochs=1)
    result = _train(recipe)
    assert result.steps > 0 and result.gguf_check is not None
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_early_stopping_keeps_the_best_epoch(tiny, target_gguf, tmp_path):
    """patience: training stops once the held-out loss has not improved for that many epochs, and the adapter
    written is the best epoch's, not the last one's."""
    recipe = _recipe(
        tiny, target_gguf, tmp_path, epochs=40, patience=2, val_fraction=0.25, learning_rate=5e-2, batch_size=3
    )
    result = _train(recipe)
    epochs = [p for p in result.curve if p.get("val_loss") is not None]
    best = min(epochs, key=lambda p: p["val_loss"])
    per_epoch = result.n_train // 3
    assert result.steps < 40 * per_epoch, "it ran every epoch: nothing stopped it"
    assert result.best_step == best["step"] < result.steps
    assert [p["step"] for p in epochs][-3] == best["step"]  # stopped two epochs after the best one
    # the adapter on disk reproduces the best epoch's held-out loss, not the last epoch's
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tskd_lite.train import Example, answer_loss, split

    target_dir = hf_dir(recipe.target, log=lambda _: None)
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    fmt = Formatter.for_target(tokenizer, recipe.target)
    examples = [Example(*fmt.encode(p, a, recipe.train.max_seq_len, keep)) for p, a, keep in PAIRS]
    _, val = split(examples, recipe.train.val_fraction, recipe.train.seed)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32), result.out_dir / "adapter"
    ).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        loss, n = answer_loss(model, val, pad, torch.device("cpu"))
    assert loss.item() == pytest.approx(best["val_loss"], abs=1e-4)
    assert abs(loss.item() - epochs[-1]["val_loss"]) > 1e-3


def test_ctrl_c_in_the_step_that_stops_early_is_kept_and_resumes_to_the_same_training(
    tiny, target_gguf, tmp_path, monkeypatch
):
    """A Ctrl-C pressed during the step after which early stopping ends the loop was dropped (the loop broke out
    before looking): the training went on to its outputs and the command exited 0. Now it is saved and raised, and
    the resume stops at once, where the uninterrupted training stopped."""
    import tskd_lite.train.loop as loop

    settings = dict(epochs=40, patience=2, val_fraction=0.25, learning_rate=5e-2, batch_size=3, checkpoint_every=1000)
    (tmp_path / "clean").mkdir()
    (tmp_path / "pressed").mkdir()
    reference = _train(_recipe(tiny, target_gguf, tmp_path / "clean", **settings))
    recipe = _recipe(tiny, target_gguf, tmp_path / "pressed", **settings)
    stops = loop._early_stopping

    def press_when_stopping(*args):
        stop = stops(*args)
        if stop:
            os.kill(os.getpid(), signal.SIGINT)  # caught by the loop's deferring handler: a flag, no exception
        return stop

    monkeypatch.setattr(loop, "_early_stopping", press_when_stopping)
    with pytest.raises(KeyboardInterrupt):
        _train(recipe)
    assert not (recipe.output.run_dir / "train" / "train.json").exists(), "the outputs were written after Ctrl-C"
    saved = json.loads((recipe.output.run_dir / "train" / "checkpoint" / "state.json").read_text())
    assert saved["step"] == reference.steps
    monkeypatch.setattr(loop, "_early_stopping", stops)
    resumed = _train(recipe)
    assert (resumed.steps, resumed.best_step) == (reference.steps, reference.best_step)
    np.testing.assert_allclose([p["loss"] for p in resumed.curve], [p["loss"] for p in reference.curve], rtol=1e-5)


def test_a_stale_target_cache_is_converted_again(tiny, tmp_path):
    """The cache belongs to the file it was made from: a GGUF replaced in place is converted again."""
    gguf = tmp_path / "target.gguf"
    shutil.copy(tiny["other"], gguf)
    target = Target(model=gguf, cache=tmp_path / "hf")
    logged = []
    hf_dir(target, log=logged.append)
    first = (tmp_path / "hf" / "model.safetensors").read_bytes()
    hf_dir(target, log=logged.append)
    assert len(logged) == 1  # the second call reuses the cache
    shutil.copy(tiny["teacher"], gguf)  # another model under the same name
    hf_dir(target, log=logged.append)
    assert "converting again" in logged[1]
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() != first


def test_a_kill_between_the_checkpoint_swaps_renames_keeps_the_checkpoint(tmp_path):
    from tskd_lite.train import _recover_checkpoint

    ckpt = tmp_path / "checkpoint"
    for name, step in (("checkpoint.old", 50), ("checkpoint.tmp", 100)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text(json.dumps({"step": step}))
    _recover_checkpoint(ckpt)  # killed after checkpoint/ became .old and before .tmp became checkpoint/
    assert json.loads((ckpt / "state.json").read_text())["step"] == 100
    shutil.rmtree(ckpt)
    (tmp_path / "checkpoint.tmp").mkdir()  # killed while writing the new one: it has no state.json yet
    _recover_checkpoint(ckpt)
    assert json.loads((ckpt / "state.json").read_text())["step"] == 50


# bitsandbytes tries to fetch its Hub kernel only where functional.has_avx512bf16() holds: made to hold on any CPU
AVX512_BF16 = """
import builtins, sys
_import = builtins.__import__
def _with_avx512_bf16(*args, **kwargs):
    module = _import(*args, **kwargs)
    functional = sys.modules.get("bitsandbytes.functional")
    if functional is not None and hasattr(functional, "has_avx512bf16"):
        functional.has_avx512bf16 = lambda: True
    return module
builtins.__import__ = _with_avx512_bf16
"""


def test_bitsandbytes_absent_hub_kernel_warning_is_not_shown():
    warnings = ("Failed to load CPU gemm_4bit_forward from kernels-community", "Skipping publisher trust check")
    loud = subprocess.run([sys.executable, "-c", AVX512_BF16 + "import peft"], capture_output=True, text=True)
    if not any(w in loud.stderr + loud.stdout for w in warnings):
        pytest.skip("this bitsandbytes does not warn about a Hub kernel, even on a CPU with AVX-512 BF16")
    # peft imports bitsandbytes, anywhere in tskd_lite or bench/: importing tskd_lite first is enough
    code = AVX512_BF16 + "import tskd_lite, peft"
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert quiet.returncode == 0, quiet.stderr
    assert not any(w in quiet.stderr + quiet.stdout for w in warnings), quiet.stderr


def test_only_that_warning_of_bitsandbytes_is_dropped(caplog):
    """Any CPU: the record bitsandbytes logs on AVX-512 BF16 CPUs, as it logs it, is dropped; the logger's other
    warnings and errors are not."""
    import logging

    from tskd_lite import BNB_HUB_KERNEL_WARNING

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning(
            BNB_HUB_KERNEL_WARNING + ": %s. Please make sure you already `pip install kernels` and the kernels "
            ">= 0.11.1",
            ModuleNotFoundError("No module named 'kernels'"),
        )
        logger.warning("some other warning")
        logger.error("an error")
    assert [r.getMessage() for r in caplog.records] == ["some other warning", "an error"]


def test_only_that_record_of_kernels_is_dropped(caplog):
    """kernels (installed by transformers) logs, offline, that it skips a trust check for bitsandbytes' kernel: that
    record is dropped, the same check for another repository is not."""
    import logging

    logger = logging.getLogger("kernels._internals.hf_hub")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for repo in ("kernels-community/quantization-bitsandbytes", "someone/other-kernel"):
            logger.warning(f"Skipping publisher trust check for '{repo}' because Hugging Face Hub is in offline mode.")
    assert [r.getMessage() for r in caplog.records] == [
        "Skipping publisher trust check for 'someone/other-kernel' because Hugging Face Hub is in offline mode."
    ]
