"""Training on several devices: `tskd-lite train` under torchrun, 2 CPU processes on gloo, against 1 process.

The global batch is the same (each step's batches are split between the ranks), so the losses per step must be the
single process's within 1e-4; rank 0 alone writes; a rank killed after a checkpoint resumes to the same losses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import recipe_dict, write_recipe

from tskd_lite import pipeline
from tskd_lite.recipe import load_recipe
from tskd_lite.target import hf_dir

PAIRS = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a in range(4) for b in range(3)]

# 9 training pairs in batches of 4, 4 and 1 (the 1 leaves rank 1 without a share), two batches a step, 3 held out
# (2 for rank 0, 1 for rank 1), early stopping's bookkeeping on, a checkpoint every 2 of the 9 steps.
SETTINGS = dict(
    rank=4,
    alpha=8,
    epochs=6,
    batch_size=4,
    grad_accum=2,
    val_fraction=0.25,
    patience=4,
    max_seq_len=96,
    learning_rate=1e-2,
    dropout=0.0,
    checkpoint_every=2,
    replay=0.0,  # replayed pairs would change the split this layout is made for
)

# Each spied write is appended to TSKD_TEST_WRITES as "<rank> <what>": which process wrote the outputs.
SPY = """
import os, sys
from tskd_lite import atomic, cli
import tskd_lite.train.loop as loop

def spied(what, fn):
    def call(*args, **kwargs):
        with open(os.environ["TSKD_TEST_WRITES"], "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {what(*args)}\\n")
        return fn(*args, **kwargs)
    return call

atomic.write_text = spied(lambda path, *_: os.path.basename(path), atomic.write_text)
loop.publish = spied(lambda *_: "publish", loop.publish)
sys.argv = ["tskd-lite", *sys.argv[1:]]
cli.entry()
"""


def _recipe(tiny, target_gguf, folder: Path):
    folder.mkdir()
    raw = recipe_dict(tiny, folder / "run" / "pool.db")
    raw["target"] = {"model": target_gguf, "cache": folder.parent / "target.hf"}  # one conversion for all runs
    raw["train"] = SETTINGS
    recipe = load_recipe(write_recipe(folder / "r.toml", raw))
    recipe.output.export_path.parent.mkdir(parents=True)
    recipe.output.export_path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}) + "\n"
            for p, a in PAIRS
        )
    )
    return recipe


def _env(**extra) -> dict:
    # one thread a process, so that 2 processes fit 2 cores
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def _curve(recipe) -> dict:
    return json.loads((recipe.output.run_dir / "train" / "train.json").read_text())


def _kill_rank(launcher: subprocess.Popen, rank: int) -> None:
    """SIGKILL the worker of that rank (torchrun starts each worker in a session of its own)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError(f"no worker of rank {rank} among {children}")


def test_two_processes_train_as_one_and_a_killed_rank_resumes(tiny, target_gguf, tmp_path):
    one, two, killed = (_recipe(tiny, target_gguf, tmp_path / name) for name in ("one", "two", "killed"))
    hf_dir(one.target)  # convert once up front so that the processes go straight to training
    reference = pipeline.train_target(one, progress=False, log=lambda _: None)
    ref_losses = [p["loss"] for p in reference.curve]
    ref_vals = [p["val_loss"] for p in reference.curve if "val_loss" in p]
    assert reference.steps == 9 and len(ref_vals) == 6 and reference.processes == 1

    # 2 processes, the same global batch: the same losses, one set of outputs, written by rank 0 alone
    (tmp_path / "spy.py").write_text(SPY)
    writes = tmp_path / "writes.txt"
    cmd = _torchrun(str(tmp_path / "spy.py"), "train", "--quiet", str(two.path))
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(TSKD_TEST_WRITES=str(writes)), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = _curve(two)
    losses = [p["loss"] for p in result["curve"]]
    vals = [p["val_loss"] for p in result["curve"] if "val_loss" in p]
    loss_diff = np.abs(np.subtract(losses, ref_losses)).max()
    val_diff = np.abs(np.subtract(vals, ref_vals)).max()
    print(f"\n2 processes vs 1: max |Δ loss| {loss_diff:.2e} over {len(losses)} steps, max |Δ val_loss| {val_diff:.2e}")
    assert loss_diff < 1e-4 and val_diff < 1e-4
    assert result["processes"] == 2 and result["mode"] == reference.mode
    same = ("steps", "best_step", "answer_tokens", "n_train", "n_val")
    assert {k: result[k] for k in same} == {k: getattr(reference, k) for k in same}
    lines = writes.read_text().split("\n")[:-1]
    assert lines.count("0 publish") == 1 and lines.count("0 train.json") == 1, lines
    outputs = ("publish", "train.json", "state.json", "replay.jsonl")
    assert all(rank == "0" for rank, what in map(str.split, lines) if what in outputs), lines
    assert lines.count("0 state.json") == 5  # the checkpoints at steps 2, 4, 6, 8, and 9 before the outputs
    assert done.stdout.count("trained the target") == 1, done.stdout  # rank 0 alone logs
    out = two.output.run_dir / "train"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".tskd-train", "adapter", "merged", "adapter.gguf", "train.json"]
    )
    _same_adapter(out / "adapter", reference.out_dir / "adapter")

    # rank 1 killed after a checkpoint: torchrun ends rank 0, and the run resumes to the same losses
    cmd = _torchrun("-m", "tskd_lite", "train", "--quiet", str(killed.path))
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env(), text=True)
    state = killed.output.run_dir / "train" / "checkpoint" / "state.json"
    deadline = time.time() + 300
    while launcher.poll() is None and time.time() < deadline:
        try:
            step = json.loads(state.read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-swap
            step = 0
        if step >= 4:
            _kill_rank(launcher, 1)
            break
        time.sleep(0.01)
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode not in (0, None), "training finished before the kill; nothing was interrupted"
    assert not (killed.output.run_dir / "train" / "train.json").exists(), output
    resumed = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("resuming training from the checkpoint at step") == 1, resumed.stdout
    result = _curve(killed)
    again = [p["loss"] for p in result["curve"]]
    print(f"killed and resumed vs uninterrupted: max |Δ loss| {np.abs(np.subtract(again, losses)).max():.2e}")
    np.testing.assert_allclose(again, losses, atol=1e-6)
    np.testing.assert_allclose(again, ref_losses, atol=1e-4)


def _same_adapter(a: Path, b: Path) -> None:
    from safetensors.numpy import load_file

    x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert x.keys() == y.keys()
    diff = max(float(np.abs(x[k] - y[k]).max()) for k in x)
    print(f"adapter weights, 2 processes vs 1: max |Δ| {diff:.2e}")
    assert diff < 1e-3
