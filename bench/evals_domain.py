"""A real skill from data no one here wrote: one task of OpenAI's `evals` package registry, split for the benchmark.

The wheel comes from PyPI (`pip download --no-deps evals==3.0.1.post1`, see `just dates`) and is read as a zip:
nothing from it is installed or executed. Writes, into --out:
  train.jsonl  chat pairs (the teacher's private fine-tuning data)
  test.jsonl   {"prompt", "answer"} held out from the teacher and the pipeline
  seeds.txt    five training prompts: all the pipeline ever sees of the private data
  recipe.toml  how the benchmark writes new prompts for such a task (below)

New prompts are written by the un-tuned base continuing a list of kept prompts, with no chat template: a task's
inputs (a date, an equation) are not questions a small model writes when asked for one, and the fine-tuned teacher
asked in its chat template answers the examples instead (on the date task it wrote converted dates, not new ones).

The task's system message is dropped: the teacher learns the task as a fine-tuned model does, from the user turn
alone, so a base model given the same prompt does not get the instructions for free.

    python bench/evals_domain.py WHEEL --task imperial_date_to_string --out data/dates [--train 400 --test 96]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or imported
from bench.domainfiles import write_chat_pairs  # noqa: E402


def read_task(wheel: Path, task: str) -> list[tuple[str, str]]:
    """(user prompt, ideal answer) of every sample of the task, in the file's order."""
    name = f"evals/registry/data/{task}/samples.jsonl"
    with zipfile.ZipFile(wheel) as z:
        try:
            lines = z.read(name).decode("utf-8").splitlines()
        except KeyError:
            raise SystemExit(f"{wheel}: no {name} in this wheel") from None
    pairs = []
    for line in filter(str.strip, lines):
        row = json.loads(line)
        user = [m["content"] for m in row["input"] if m["role"] == "user"]
        ideal = row["ideal"][0] if isinstance(row["ideal"], list) else row["ideal"]
        pairs.append((user[-1].strip(), ideal.strip()))
    return pairs


# Paths resolve like the shared recipe's (recipes/transfer.toml), whose teacher and base this model is.
GENERATOR = """[generator]   # the un-tuned base continues the list; the raw template gives it the text as is
model = "../models/SmolLM2-135M-Instruct.Q4_1.gguf"
n_ctx = 512
chat_template = "{{ messages[0]['content'] }}"

[expand]
instruction = "{examples}\\n-"
"""


def write(wheel: Path, task: str, out: Path, n_train: int, n_test: int, seed: int) -> None:
    pairs = list(dict(read_task(wheel, task)).items())  # one answer per prompt
    if len(pairs) < n_train + n_test:
        raise SystemExit(f"{task}: {len(pairs)} distinct samples, fewer than --train {n_train} + --test {n_test}")
    random.Random(seed).shuffle(pairs)
    train, test = pairs[:n_train], pairs[n_train : n_train + n_test]
    out.mkdir(parents=True, exist_ok=True)
    write_chat_pairs(out / "train.jsonl", train)
    with (out / "test.jsonl").open("w") as f:
        for prompt, answer in test:
            f.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
    (out / "seeds.txt").write_text("\n".join(p for p, _ in train[:5]) + "\n")
    (out / "recipe.toml").write_text(GENERATOR)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.wheel, args.task, args.out, args.train, args.test, args.seed)
    print(f"{args.out}: {args.task}, {args.train} train / {args.test} test")
