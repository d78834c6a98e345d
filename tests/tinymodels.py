"""Tiny random GGUF models written at test time, so the suite needs no download.

The tokenizer is byte-level BPE (GPT-2 byte alphabet) plus ChatML control tokens, which both llama.cpp and
transformers' GGUF loader read. llama.cpp insists on at least one merge, so the default has one that ordinary text
never triggers ("~~"); other merges give a second, incompatible tokenizer for the per-byte path.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_alphabet() -> list[str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    merges: list[tuple[str, str]] = (("~", "~"),),
    chat_template: str | None = CHATML,
    scale: float = 0.3,
) -> Path:
    """Write a random llama-architecture GGUF (f32 weights) and return its path."""
    rng = np.random.default_rng(seed)
    tokens = byte_alphabet() + ["".join(pair) for pair in merges] + SPECIALS
    n_vocab = len(tokens)
    types = [gguf.TokenType.NORMAL] * (n_vocab - len(SPECIALS)) + [gguf.TokenType.CONTROL] * len(SPECIALS)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-{seed}")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def rand(*shape: int, std: float = scale) -> np.ndarray:
        return (rng.standard_normal(shape) * std / np.sqrt(shape[-1])).astype(np.float32)

    head_dim = n_embd // n_head
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd, std=1.0 * np.sqrt(n_embd)))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", rand(n_embd, n_embd, std=1.0))
        w.add_tensor(f"blk.{i}.attn_k.weight", rand(n_head_kv * head_dim, n_embd, std=1.0))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(n_head_kv * head_dim, n_embd, std=1.0))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd, std=1.0))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd, std=1.0))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd, std=3.0))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_lora(
    path: Path,
    targets: dict[str, tuple[int, int]],
    *,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    std: float = 0.5,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a random GGUF LoRA adapter for write_tiny_llama's model; targets maps a base tensor name
    (e.g. 'blk.0.ffn_up.weight') to its (out, in) shape. Returns {name: (A [r, in], B [out, r])}."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    weights = {}
    for name, (n_out, n_in) in targets.items():
        a = (rng.standard_normal((rank, n_in)) * std / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal((n_out, rank)) * std / np.sqrt(rank)).astype(np.float32)
        w.add_tensor(f"{name}.lora_a", a)
        w.add_tensor(f"{name}.lora_b", b)
        weights[name] = (a, b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights
