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

With --served, teacher and base are llama-cpp-python servers (`python -m llama_cpp.server`, one per model, on
127.0.0.1) and each trial SIGKILLs both servers' process groups instead, at a moment drawn over the uninterrupted
served run's pool stage (the only stage before evaluation that asks them anything). The run must then stop on its
own: exit status != 0 and one "Error:" line naming a server's url, no traceback. The servers are started again on
the same ports, the command is run again to the end and compared with an uninterrupted served run, as above.

Writes --out (.md and .json) with every trial's kill time, the phase it landed in and the verdict.

    python bench/chaos.py --trials 50          # about 15 to 25 minutes on 2 cores
    python bench/chaos.py --served --trials 10 # writes bench/chaos-served.md and .json
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from servers import ServerProcess, free_port

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
SERVED_ROLES = ("teacher", "base")
SEED = 3  # the recipe seed of both harnesses (served and in-process)
POOL_DONE = "dataset: "  # the line the pool stage ends with (the export), before training


def recipe_text(models: Path, run: Path, urls: dict[str, str] | None = None) -> str:
    """The recipe; with urls (role -> server root), teacher and base are served, each keeping its local GGUF in
    `model` for the chat template and tokenizer (as tests/test_served.py does)."""
    seeds = ", ".join(json.dumps(s) for s in SEEDS)
    return f"""seed = {SEED}
threads = 1
parallel = 4
{_role(models, "teacher", urls)}
{_role(models, "base", urls)}
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


def _role(models: Path, role: str, urls: dict[str, str] | None) -> str:
    table = f'[{role}]\nmodel = "{models / f"{role}.gguf"}"\nn_ctx = 512'
    if urls is None:
        return table
    return table + f'\nbackend = "openai"\nurl = "{urls[role]}"\nserved_model = "{role}"'


def make_models(folder: Path) -> None:
    write_tiny_llama(folder / "teacher.gguf", seed=1)
    write_tiny_llama(folder / "base.gguf", seed=2)
    write_tiny_llama(folder / "target.gguf", seed=5)
    items = [{"prompt": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(3) for b in range(3)]
    (folder / "eval.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))


def command(recipe: Path) -> list[str]:
    return [sys.executable, "-m", "tskd_lite", "run", "--quiet", str(recipe)]


class Servers:
    """llama-cpp-python's server for teacher and base, started as tests/test_served.py starts them, on ports kept
    across restarts: the resumed run finds them at the urls its recipe and its store name."""

    def __init__(self, models: Path, logs: Path) -> None:
        self.models, self.logs = models, logs
        self.ports: dict[str, int] = {}
        while len(set(self.ports.values())) < len(SERVED_ROLES):  # two free ports, not one port twice
            self.ports = {role: free_port() for role in SERVED_ROLES}
        self.urls = {role: f"http://127.0.0.1:{port}" for role, port in self.ports.items()}
        self.running: dict[str, ServerProcess] = {}

    def start(self) -> None:
        for role, port in self.ports.items():
            args = ["--model", str(self.models / f"{role}.gguf"), "--model_alias", role]
            args += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512"]
            args += ["--n_threads", "1", "--n_threads_batch", "1", "--verbose", "false"]
            what = f"llama_cpp.server for {role}"
            log = self.logs / f"{role}-server.log"
            self.running[role] = ServerProcess(
                [sys.executable, "-m", "llama_cpp.server", *args], port, what, timeout=120, log=log
            )

    def kill(self) -> None:
        """SIGKILL of each server's process group (ServerProcess.stop), as a crash or an OOM kill ends it."""
        for server in self.running.values():
            server.stop()
        self.running = {}


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


def work_time(recipe: Path, last: str = "report: ") -> float:
    """Seconds from the start of an uninterrupted run to its last line (or to the line starting with `last`): the
    kill moments are drawn over the command's work, not over the interpreter's shutdown after it (where there is
    nothing left to stop)."""
    started = time.perf_counter()
    proc = subprocess.Popen(command(recipe), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, reader = _lines_read(proc)
    if proc.wait() != 0:
        reader.join()
        raise SystemExit("the uninterrupted run failed:\n" + "\n".join(line for _, line in lines[-20:]))
    reader.join()
    done_at = next(t for t, line in lines if line.startswith(last))
    return done_at - started


def _started(recipe: Path, wall: float, rng: np.random.Generator):
    """The run started, and left to go on for a moment drawn over `wall` seconds: (process, its lines, their
    reader, that moment)."""
    at = float(rng.uniform(0.0, wall))
    proc = subprocess.Popen(command(recipe), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, reader = _lines_read(proc)
    time.sleep(at)
    return proc, lines, reader, at


def trial(i: int, recipe: Path, run: Path, wall: float, rng: np.random.Generator, sigint: bool) -> dict:
    proc, lines, reader, at = _started(recipe, wall, rng)
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


def stop_verdict(returncode: int, output: list[str], urls: list[str]) -> str | None:
    """None where a run whose servers died stopped as it should: exit status != 0, one "Error:" line that names a
    server's url and no traceback; else what it did instead."""
    errors = [line for line in output if line.startswith("Error:")]
    wrong = []
    if returncode == 0:
        wrong.append("exit 0")
    if any("Traceback" in line for line in output):
        wrong.append("a traceback")
    if len(errors) != 1:
        wrong.append(f"{len(errors)} 'Error:' lines")
    elif not any(url in errors[0] for url in urls):
        wrong.append("the error names no server url")
    return f"exit {returncode}: {', '.join(wrong)}" if wrong else None


def served_trial(i: int, recipe: Path, run: Path, wall: float, rng: np.random.Generator, servers: Servers) -> dict:
    proc, lines, reader, at = _started(recipe, wall, rng)
    sent = time.perf_counter()
    servers.kill()
    # where the kill landed: the run itself goes on until a request fails (retried for 7.5 s), or, when the pool
    # needed nothing more from the servers, through training to the evaluation
    where = phase(run)
    proc.wait()
    reader.join()
    output = [line for _, line in lines]
    # The kill aims at the pool, the one stage before evaluation that asks the servers: one sent after the pool's
    # last line was read missed it (the run still stops, in evaluation; checked all the same).
    pool_done = next((t for t, line in lines if line.startswith(POOL_DONE)), None)
    row = {"trial": i, "kill_at_s": round(at, 2), "signal": "SIGKILL of both servers", "phase": where}
    row["finished_before_the_kill"] = pool_done is not None and pool_done < sent
    row["exit"] = proc.returncode
    row["stop"] = stop_verdict(proc.returncode, output, list(servers.urls.values()))
    row["stop_output"] = output[-3:]
    servers.start()
    resumed = subprocess.run(command(recipe), capture_output=True, text=True)
    row["problems"] = []
    if resumed.returncode != 0:
        row["problems"].append(f"resume failed: {resumed.stdout[-300:]} {resumed.stderr[-300:]}")
    return row


def _intro(results: dict) -> str:
    if not results.get("served"):
        return (
            f"`{results['command']}`: {len(results['trials'])} trials of `tskd-lite run` (pool, training, evaluation, "
            f"report) on tiny random models, each killed at a moment drawn uniformly over the uninterrupted run's "
            f"{results['wall_s']:.1f} s of work (to its last line; the interpreter's shutdown after it ignores "
            "SIGINT), then run again to the end and compared with the uninterrupted run (store tables, "
            "integrity_check, dataset bytes, loss curve and adapter within 1e-4, evaluation rows). Wall time "
            f"{results['total_s'] / 60:.1f} min."
        )
    return (
        f"`{results['command']}`: {len(results['trials'])} trials of `tskd-lite run` (pool, training, evaluation, "
        "report) on tiny random models with teacher and base served by llama-cpp-python's server (`python -m "
        "llama_cpp.server`, one per model, each recipe role keeping its local GGUF for the chat template and "
        f"tokenizer; recipe seed {results['seed']}, as in-process). Each trial SIGKILLs both "
        "servers' process groups at a moment drawn uniformly over the uninterrupted served run's "
        f"{results['wall_s']:.1f} s of pool stage (to its `dataset:` line; training never asks the servers), "
        "checks that the run stops on its own (exit status != 0, one `Error:` line naming a server's url, no "
        "traceback), starts the servers again on the same ports, runs the command again to the end and compares "
        "with an uninterrupted served run (store tables, integrity_check, dataset bytes, loss curve and adapter "
        f"within 1e-4, evaluation rows). Wall time {results['total_s'] / 60:.1f} min."
    )


def _tally(results: dict, killed: list[dict]) -> list[str]:
    rows = results["trials"]
    ok = sum(not r["problems"] for r in killed)
    if not results.get("served"):
        return [
            f"**{ok} of {len(killed)} killed runs resumed to the uninterrupted result** "
            f"({sum(r['signal'] == 'SIGINT' for r in killed)} by SIGINT, the rest by SIGKILL; "
            f"{len(rows) - len(killed)} more trials finished before their kill time: recorded, not counted, "
            "redrawn)."
        ]
    control = results["control_problems"]
    # The client words its error by whether the server had answered it yet: the kills that met a run mid-pool,
    # and those that came while it was still starting (its first request refused)
    mid_run = sum("stopped answering mid-run" in " ".join(r["stop_output"]) for r in killed)
    return [
        f"**{ok} of {len(killed)} runs whose servers were killed resumed to the uninterrupted result; "
        f"{sum(r['stop'] is None for r in killed)} of {len(killed)} stopped with exit status != 0 and one line "
        f"naming the url** ({len(rows) - len(killed)} more kills came after the pool's last line, missed: recorded, "
        "not counted, redrawn).",
        "",
        f"{mid_run} of the {len(killed)} errors say the server stopped answering mid-run; the other "
        f"{len(killed) - mid_run} came before the run's first request was answered (the server is not answering).",
        "",
        "Control: a second uninterrupted served run, on servers started again, "
        + (f"differed from the first: {control}." if control else "equal to the first."),
    ]


def markdown(results: dict) -> str:
    rows = results["trials"]
    served = bool(results.get("served"))
    killed = [r for r in rows if not r["finished_before_the_kill"]]
    phases = sorted({r["phase"] for r in killed})
    lines = ["# Kill harness" + (" (served)" if served else ""), "", _intro(results), "", *_tally(results, killed)]
    lines += ["", "| phase the kill landed in | killed |" + (" stopped in one line naming the url |" if served else "")]
    lines[-1] += " resumed equal |"
    lines.append("|---|---|---|" + ("---|" if served else ""))
    for p in phases:
        here = [r for r in killed if r["phase"] == p]
        stopped = f" {sum(r['stop'] is None for r in here)} |" if served else ""
        lines.append(f"| {p} | {len(here)} |{stopped} {sum(not r['problems'] for r in here)} |")
    bad = [r for r in rows if r["problems"] or r.get("stop")]
    if bad:
        lines += ["", "Failures:", ""]
        lines += [
            f"- trial {r['trial']} ({r['signal']} at {r['kill_at_s']} s, {r['phase']}): {_verdict(r)}" for r in bad
        ]
    return "\n".join(lines) + "\n"


def _verdict(row: dict) -> str:
    wrong = [*row["problems"], *([f"stop: {row['stop']} {row['stop_output']}"] if row.get("stop") else [])]
    return "ok" if not wrong else str(wrong)


def _run_trials(n: int, one: Callable[[int], dict]) -> list[dict]:
    trials: list[dict] = []
    i = 0
    # --trials counts the runs a kill reached: one that finished first is recorded, not counted, and redrawn
    while sum(not t["finished_before_the_kill"] for t in trials) < n and i < 3 * n:
        row = one(i)
        trials.append(row)
        missed = " (missed)" if row["finished_before_the_kill"] else ""
        print(
            f"trial {i}: {row['signal']} at {row['kill_at_s']} s ({row['phase']}){missed}: {_verdict(row)}", flush=True
        )
        i += 1
    return trials


def local_trials(work: Path, models: Path, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    reference = work / "reference"
    ref_recipe = work / "reference.toml"
    ref_recipe.write_text(recipe_text(models, reference))
    subprocess.run(command(ref_recipe), check=True, capture_output=True)  # converts the target once
    shutil.rmtree(reference)
    wall = work_time(ref_recipe)
    ref = outcome(reference)

    def one(i: int) -> dict:
        run, recipe = work / f"trial{i}", work / f"trial{i}.toml"
        recipe.write_text(recipe_text(models, run))
        row = trial(i, recipe, run, wall, rng, sigint=bool(rng.random() < args.sigint_share))
        if not any(p.startswith("resume failed") for p in row["problems"]):
            row["problems"] += compare(ref, outcome(run))
        shutil.rmtree(run)
        return row

    return {"wall_s": wall, "trials": _run_trials(args.trials, one)}


def served_trials(work: Path, models: Path, args: argparse.Namespace, rng: np.random.Generator) -> dict:
    servers = Servers(models, work)
    urls = servers.urls

    def uninterrupted(name: str) -> Path:
        (work / f"{name}.toml").write_text(recipe_text(models, work / name, urls))
        return work / f"{name}.toml"

    def one(i: int) -> dict:
        run, recipe = work / f"trial{i}", work / f"trial{i}.toml"
        recipe.write_text(recipe_text(models, run, urls))
        row = served_trial(i, recipe, run, wall, rng, servers)
        if not row["problems"]:
            row["problems"] += compare(ref, outcome(run))
        shutil.rmtree(run)
        return row

    try:
        servers.start()
        # The first uninterrupted run converts the target; kept as a control: the same run on servers started
        # again must equal the reference, or a difference after a kill could be the restart's and not the kill's
        subprocess.run(command(uninterrupted("control")), check=True, capture_output=True)
        servers.kill()
        servers.start()
        wall = work_time(uninterrupted("reference"), last=POOL_DONE)
        ref = outcome(work / "reference")
        control = compare(ref, outcome(work / "control"))
        return {
            "wall_s": wall,
            "seed": SEED,
            "control_problems": control,
            "trials": _run_trials(args.trials, one),
        }
    finally:
        servers.kill()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--sigint-share", type=float, default=0.2, help="share of trials stopped by SIGINT")
    parser.add_argument("--served", action="store_true", help="serve teacher and base, kill the servers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default bench/chaos, bench/chaos-served with --served")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "bench" / ("chaos-served" if args.served else "chaos")
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
        results = (served_trials if args.served else local_trials)(work, models, args, rng)
    command_line = "python bench/chaos.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"command": command_line, **results, "total_s": time.perf_counter() - started}
    if args.served:
        results["served"] = True
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
