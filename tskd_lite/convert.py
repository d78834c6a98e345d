"""`tskd-lite convert`: a PEFT LoRA adapter folder written as a GGUF LoRA for its base GGUF, the GGUF route for a
teacher fine-tuned with Hugging Face's tools (the other route: backend = "transformers", which reads the folder as
it is).

The writer is the target's own export (lora_gguf.write), and so is the check (train/outputs.compare_gguf_adapter):
log-probs in llama.cpp (base GGUF + the new GGUF LoRA) against transformers (the base GGUF's safetensors
conversion + the PEFT adapter) on the same token ids, beside the same comparison without the adapter: on a
quantized base the two runtimes already disagree by the quantization, and a right conversion adds nothing to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from tskd_lite.errors import TskdError

# What the check scores: everyday prompts with fixed answers. Any text does, since every adapted matrix is on every
# token's path; the adapter's own domain needs data this command does not have.
CHECK_PAIRS = (
    ("How do plants make their food?", "Plants make their food by photosynthesis, turning light and water into sugar."),
    ("What is 12 multiplied by 8?", "12 multiplied by 8 is 96."),
    ("Write a short poem about the sea.", "The sea rolls in, the sea rolls out,\nand keeps its secrets grey and vast."),
)


def convert_adapter(adapter: Path, base: Path, out: Path, *, overwrite: bool = False, log=print) -> dict:
    """Write the PEFT adapter in folder `adapter` as a GGUF LoRA at `out` for the GGUF `base`, once the check has
    run; return the check's figures and the number of adapted matrices. `out` is replaced only with overwrite."""
    from tskd_lite import lora_gguf
    from tskd_lite.gguf_meta import check_gguf
    from tskd_lite.hf import check_adapter, load_hf, quiet_transformers, with_adapter
    from tskd_lite.recipe import Target
    from tskd_lite.target import Formatter, hf_dir
    from tskd_lite.train.outputs import compare_gguf_adapter

    check_gguf(base, "--base")
    if out.resolve() == base.resolve():
        raise TskdError(f"-o/--output: {out} is --base itself")
    if os.path.lexists(out) and (out.is_dir() or not overwrite):
        what = "is a folder" if out.is_dir() else "exists; pass --overwrite to replace it"
        raise TskdError(f"-o/--output: {out} {what}")
    quiet_transformers()
    folder = hf_dir(Target(model=base), log)  # the base as transformers reads it (converted once, cached beside it)
    check_adapter(adapter, folder, "ADAPTER_DIR")
    tokenizer, model = load_hf(folder, dtype="float32", device="cpu", role="base")
    peft_model = with_adapter(model, adapter, merge=False, where="ADAPTER_DIR")
    part = out.with_name(out.name + ".part")
    try:
        n = lora_gguf.write(peft_model, part, lora_gguf.gguf_arch(peft_model.get_base_model().config, base))
        fmt = Formatter.for_target(tokenizer, Target(model=base))
        # the adapter's model first, then the same model with the adapter taken out (PEFT's unload): one in memory
        check = compare_gguf_adapter(
            base, part, fmt, list(CHECK_PAIRS), adapted=lambda: peft_model, plain=lambda: peft_model.unload()
        )
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return {"matrices": n, **check}
