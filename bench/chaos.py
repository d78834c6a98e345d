"""Kill harness: runs of a small real recipe killed at random moments, resumed, and compared with a run never killed.

Each trial starts `tskd-lite run` (pool, training, evaluation, report) on tiny random models, kills it at a moment
drawn uniformly over the uninterrupted run's wall time (SIGKILL, or SIGINT for a share of the trials), runs the
same command again to the end, and compares with the uninterrupted run:

  store       every decision table equal (prompts, answers, scores, contrasts, selections, round marks) and
              PRAGMA integrity_check ok
  dataset     the exported JSONL byte for byte
  training    the loss curve within rtol 1e-4 and the adapter weights within 1e-4
  evaluation  the rows' scores equal
  SIGINT      exit status 130, one "Interrupted:" line, no traceback

Writes --out (.md and .json) with every trial's kill time, the phase it landed in and the verdict.

    python bench/chaos.py --trials 50          # about 15 to 25 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from tinymodels import write_tiny_llama  # noqa: E402

SEEDS = [
    "Where does Ada Lin live?",
    "What is 12 times 7?",
    "Which town is home to Bo Kra?",
    "How many legs does a spider have?",
    "Name three primary colours.",
]
TABLES = {
    "prompts": "select round, idx, text, source, fewshot_ids, status, dup_of, strategy, inputs from prompts "
    "order by round, idx",
    "answers": "select p.round, p.idx, a.text from answers a join prompts p on p.id = a.prompt_id "
    "order by p.round, p.idx",
    "scores": "select p.round, p.idx, s.gap, s.teacher_logprobs from scores s join prompts p on p.id = s.prompt_id "
    "order by p.round, p.idx",
    "contrasts": "select p.round, p.idx, c.contrast from contrasts c join prompts p on p.id = c.prompt_id "
    "order by p.round, p.idx",
    "selections": "select p.round, p.idx, s.kept, s.reason from selections s join prompts p on p.id = s.prompt_id "
    "order by p.round, p.idx",
    "rounds": "select round, n_kept from rounds order by round",
}


def recipe_text(models: Path, run: Path) -> str:
    seeds = ", ".join(json.dumps(s) for s in SEEDS)
    return f"""seed = 3
threads = 1
parallel = 4
[teacher]
model = "{models / "teacher.gguf"}"
n_ctx = 512
[base]
model = "{models / "base.gguf"}"
n_ctx = 512
[seeds]
prompts = [{seeds}]
[expand]
rounds = 2
candidates_per_round = 12
target_kept = 1000
few_shot = 2
max_prompt_tokens = 32
temperature = 1.0
[respond]
max_answer_tokens = 32
temperature = 0.7
[select]
rule = "top_fraction"
top_fraction = 0.75
[target]
model = "{models / "target.gguf"}"
cache = "{models / "target.hf"}"
[train]
rank = 4
alpha = 8
epochs = 3
batch_size = 4
max_seq_len = 96
learning_rate = 0.01
checkpoint_every = 3
[eval]
file = "{models / "eval.jsonl"}"
max_answer_tokens = 6
[output]
db = "{run / "pool.db"}"
dir = "{run}"
"""


def make_models(folder: Path) -> None:
    write_tiny_llama(folder / "teacher.gguf", seed=1)
    write_tiny_llama(folder / "base.gguf", seed=2)
    write_tiny_llama(folder / "target.gguf", seed=5)
    items = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(3) for b in range(3)]
    (folder / "eval.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))


def command(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "tskd_lite", "run", "--quiet", str(recipe)]


def outcome(run: Path) -> dict:
    con = sqlite3.connect(run / "pool.db")
    try:
        out = {name: con.execute(sql).fetchall() for name, sql in TABLES.items()}
        out["integrity"] = con.execute("pragma integrity_check").fetchone()[0]
    finally:
        con.close()
    out["dataset"] = (run / "pool.jsonl").read_bytes()
    train = json.loads((run / "train" / "train.json").read_text())
    out["losses"] = [p["loss"] for p in train["curve"]]
    from safetensors.numpy import load_file

    out["adapter"] = load_file(run / "train" / "adapter" / "adapter_model.safetensors")
    out["eval"] = [
        {k: r[k] for k in ("name", "contains", "exact_match")}
        for r in json.loads((run / "eval.json").read_text())["rows"]
    ]
    return out


def compare(ref: dict, got: dict) -> list[str]:
    problems = [name for name in TABLES if ref[name] != got[name]]
    if got["integrity"] != "ok":
        problems.append(f"integrity_check: {got['integrity']}")
    if ref["dataset"] != got["dataset"]:
        problems.append("dataset bytes")
    if len(ref["losses"]) != len(got["losses"]) or not np.allclose(ref["losses"], got["losses"], rtol=1e-4):
        problems.append("loss curve")
    worst = max(float(np.abs(ref["adapter"][k] - got["adapter"][k]).max()) for k in ref["adapter"])
    if set(ref["adapter"]) != set(got["adapter"]) or worst > 1e-4:
        problems.append(f"adapter (max |diff| {worst:.2g})")
    if ref["eval"] != got["eval"]:
        problems.append("evaluation rows")
    return problems


def phase(run: Path) -> str:
    """Where the kill landed, read from what is on disk."""
    if (run / "eval.json").is_file() or (run / "train" / "train.json").is_file():
        return "evaluation or report"
    if (run / "train").exists():
        return "training"
    if (run / "pool.jsonl").is_file():
        return "after the pool (export, conversion)"
    return "pool"


def _lines_read(proc: subprocess.Popen) -> tuple[list[tuple[float, str]], threading.Thread]:
    """The command's output lines, each with the moment this process read it (click flushes every line)."""
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def work_time(recipe: Path) -> float:
    """Seconds from the start of an uninterrupted run to its last line: the kill moments are drawn over the
    command's work, not over the interpreter's shutdown after it (where there is nothing left to stop)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command(recipe), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, reader = _lines_read(proc)
    if proc.wait() != 0:
        reader.join()
        raise SystemExit("the uninterrupted run failed:\n" + "\n".join(line for _, line in lines[-20:]))
    reader.join()
    done_at = next(t for t, line in lines if line.startswith("report: "))
    return done_at - started


def trial(i: int, recipe: Path, run: Path, wall: float, rng: np.random.Generator, sigint: bool) -> dict:
    at = float(rng.uniform(0.0, wall))
    proc = subprocess.Popen(command(recipe), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, reader = _lines_read(proc)
    time.sleep(at)
    sent = time.perf_counter()
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(signal.SIGINT if sigint else signal.SIGKILL)
    proc.wait()
    reader.join()
    # The command's work ends with its last line ("report: ..."); the interpreter's shutdown after it (freeing
    # torch and llama.cpp, a second or more) ignores SIGINT by design (cli.entry): a signal sent after that line
    # was read found nothing left to stop. One sent before it and still followed by exit 0 was lost: a failure.
    done_at = next((t for t, line in lines if line.startswith("report: ")), None)
    finished_first = finished_first or (proc.returncode == 0 and done_at is not None and done_at < sent)
    output = "\n".join(line for _, line in lines)
    row = {"trial": i, "kill_at_s": round(at, 2), "signal": "SIGINT" if sigint else "SIGKILL", "phase": phase(run)}
    row["finished_before_the_kill"] = finished_first
    problems = []
    if sigint and not finished_first:
        lines = [line for line in output.splitlines() if line.startswith("Interrupted:")]
        if proc.returncode != 130 or len(lines) != 1 or "Traceback" in output:
            problems.append(f"SIGINT: exit {proc.returncode}, {len(lines)} 'Interrupted:' lines")
    resumed = subprocess.run(command(recipe), capture_output=True, text=True)
    if resumed.returncode != 0:
        problems.append(f"resume failed: {resumed.stdout[-300:]} {resumed.stderr[-300:]}")
    row["problems"] = problems
    return row


def markdown(results: dict) -> str:
    rows = results["trials"]
    killed = [r for r in rows if not r["finished_before_the_kill"]]
    ok = [r for r in killed if not r["problems"]]
    phases = sorted({r["phase"] for r in killed})
    lines = [
        "# Kill harness",
        "",
        f"`{results['command']}`: {len(rows)} trials of `tskd-lite run` (pool, training, evaluation, report) on tiny "
        f"random models, each killed at a moment drawn uniformly over the uninterrupted run's {results['wall_s']:.1f} "
        "s of work (to its last line; the interpreter's shutdown after it ignores SIGINT), then run again to the "
        "end and compared with the uninterrupted run (store tables, integrity_check, "
        "dataset bytes, loss curve and adapter within 1e-4, evaluation rows). Wall time "
        f"{results['total_s'] / 60:.1f} min.",
        "",
        f"**{len(ok)} of {len(killed)} killed runs resumed to the uninterrupted result** "
        f"({sum(r['signal'] == 'SIGINT' for r in killed)} by SIGINT, the rest by SIGKILL; "
        f"{len(rows) - len(killed)} more trials finished before their kill time: recorded, not counted, redrawn).",
        "",
        "| phase the kill landed in | killed | resumed equal |",
        "|---|---|---|",
    ]
    for p in phases:
        here = [r for r in killed if r["phase"] == p]
        lines.append(f"| {p} | {len(here)} | {sum(not r['problems'] for r in here)} |")
    bad = [r for r in killed if r["problems"]]
    if bad:
        lines += ["", "Failures:", ""]
        lines += [
            f"- trial {r['trial']} ({r['signal']} at {r['kill_at_s']} s, {r['phase']}): {r['problems']}" for r in bad
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--sigint-share", type=float, default=0.2, help="share of trials stopped by SIGINT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "chaos")
    args = parser.parse_args(argv)
    # Started in the background from a script, this process and so every run it starts would ignore SIGINT (a
    # shell without job control makes background commands ignore it): take the default back, so the SIGINT
    # trials reach the runs the way a Ctrl-C does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="tskd-chaos-") as tmp:
        work = Path(tmp)
        models = work / "models"
        models.mkdir()
        make_models(models)
        reference = work / "reference"
        ref_recipe = work / "reference.toml"
        ref_recipe.write_text(recipe_text(models, reference))
        subprocess.run(command(ref_recipe), check=True, capture_output=True)  # converts the target once
        shutil.rmtree(reference)
        wall = work_time(ref_recipe)
        ref = outcome(reference)
        trials: list[dict] = []
        i = 0
        # --trials counts the runs a kill reached: one that finished first is recorded, not counted, and redrawn
        while sum(not t["finished_before_the_kill"] for t in trials) < args.trials and i < 3 * args.trials:
            run = work / f"trial{i}"
            recipe = work / f"trial{i}.toml"
            recipe.write_text(recipe_text(models, run))
            row = trial(i, recipe, run, wall, rng, sigint=bool(rng.random() < args.sigint_share))
            if not any(p.startswith("resume failed") for p in row["problems"]):
                row["problems"] += compare(ref, outcome(run))
            trials.append(row)
            print(
                f"trial {i}: {row['signal']} at {row['kill_at_s']} s ({row['phase']}): "
                f"{'ok' if not row['problems'] else row['problems']}",
                flush=True,
            )
            shutil.rmtree(run)
            i += 1
    command_line = "python bench/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command_line, "wall_s": wall, "trials": trials, "total_s": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
