"""`just bench`: every stage side by side in one process; prints the table and writes bench/results.md.

Tokens/s count every token a path processes (prompt and answer). Ratios compare with the first row of a stage.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import generate  # noqa: E402
import quant  # noqa: E402
import score  # noqa: E402
import served  # noqa: E402
import train  # noqa: E402
from common import ROOT  # noqa: E402

from tskd_lite.models import fetch  # noqa: E402


def main() -> None:
    fetch(ROOT / "models")
    started = time.perf_counter()
    gen_rows, pairs = generate.run()
    rows = gen_rows + score.run(pairs) + quant.run(pairs) + train.run(pairs)
    if served.available():  # vLLM in its own venv (`just setup-vllm`): the served backend beside a bare HTTP loop
        rows += served.run()
    else:
        print(f"no served rows: {served.VLLM_PYTHON} is missing (`just setup-vllm` adds them)")
    lines = [
        "| stage | path | tokens | seconds | tokens/s | ratio | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(
            f"| {r['stage']} | {r['path']} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
            f"{ratio} | {r['note']} |"
        )
    table = "\n".join(lines)
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}"
    out = ROOT / "bench" / "results.md"
    out.write_text(f"Written by `just bench` ({machine}; {time.perf_counter() - started:.0f} s in all).\n\n{table}\n")
    (ROOT / "bench" / "results.json").write_text(json.dumps(rows, indent=2))
    print(table)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
