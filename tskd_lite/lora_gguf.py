"""Write a PEFT LoRA adapter as a GGUF LoRA that llama.cpp applies on the target's GGUF."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tskd_lite.errors import TskdError

# transformers model_type -> llama.cpp architecture, for targets given as a Hugging Face folder.
_ARCH_OF_MODEL_TYPE = {"llama": "llama", "gemma3_text": "gemma3", "gemma3": "gemma3", "qwen2": "qwen2"}


def gguf_arch(config, target_gguf: Path | None) -> str:
    if target_gguf is not None:
        from tskd_lite.gguf_meta import read_header

        return str(read_header(target_gguf, str(target_gguf)).fields["general.architecture"])
    arch = _ARCH_OF_MODEL_TYPE.get(config.model_type)
    if arch is None:
        raise TskdError(f"target: no GGUF LoRA export for model_type {config.model_type!r}")
    return arch


def _permute(rows: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's converter reorders the rows of llama's Q and K for its rotary layout (convert_hf_to_gguf's
    # LlamaModel.permute); a LoRA B matrix produces those rows, so it needs the same reordering.
    return rows.reshape(n_head, 2, rows.shape[0] // n_head // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write(peft_model, path: Path, arch: str) -> int:
    """Write the adapter of a PEFT model to path; return the number of adapted matrices."""
    import gguf
    from peft import get_peft_model_state_dict

    config = peft_model.get_base_model().config
    lora = peft_model.peft_config["default"]
    state = get_peft_model_state_dict(peft_model)
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(lora.lora_alpha))
    count = 0
    for key in sorted(k for k in state if k.endswith("lora_A.weight")):
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None:
            raise TskdError(f"target: no GGUF tensor name for module {module} ({arch})")
        a = state[key].float().cpu().numpy()
        b = state[key.replace("lora_A", "lora_B")].float().cpu().numpy()
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
            b = _permute(b, heads)
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b))
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return count
