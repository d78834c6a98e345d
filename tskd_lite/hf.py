"""Hugging Face folders for inference: the checks a recipe makes of a model folder and a PEFT adapter folder
(reading file headers only, no weights), the tokenizer's identity, and the one loader (safetensors only, a PEFT
adapter optionally) that the target's evaluation and replay, the transformers backend and `convert` share."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from tskd_lite.errors import TskdError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # one of them: a folder has a tokenizer
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_HEADER = 100 << 20  # bytes of a safetensors header: far above a real model's, a bound for a damaged file


def _a_folder(path: Path, where: str, expected: str) -> None:
    """One line unless `path` is a folder: not found, or not a folder (with what was expected there)."""
    if not path.is_dir():
        if path.exists():
            raise TskdError(f"{where}: {path} is not a folder (expected {expected})")
        raise TskdError(f"{where}: folder not found: {path}")


def check_hf_folder(model: Path, where: str, *, tokenizer: bool = False) -> None:
    """One line unless `model` is a Hugging Face model folder: config.json, safetensors weights (pickled .bin
    weights are never loaded) and, where asked, a tokenizer."""
    _a_folder(model, where, 'a Hugging Face model folder; a GGUF needs backend = "llama_cpp"')
    if not (model / "config.json").is_file():
        raise TskdError(f"{where}: {model} is a folder without config.json (expected a Hugging Face model folder)")
    if not any(model.glob("*.safetensors")):
        raise TskdError(
            f"{where}: {model} holds no .safetensors weights (pickled .bin weights are never loaded: convert them)"
        )
    if tokenizer and not any((model / name).is_file() for name in TOKENIZER_FILES):
        raise TskdError(f"{where}: {model} holds no tokenizer ({', '.join(TOKENIZER_FILES)})")


def safetensors_shapes(path: Path, where: str) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors file's header (8 bytes of length, then JSON); no weight is read."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER:
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(f.read(size))
        return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
        raise TskdError(f"{where}: {path} is not a readable safetensors file ({e})") from None


def check_adapter(lora: Path, model: Path, where: str) -> None:
    """One line unless `lora` is a PEFT LoRA folder (adapter_config.json, safetensors weights) whose every matrix
    pair fits a weight of `model`: an adapter made for another model is refused here, since PEFT would load one for
    a deeper model without a word (the layers it lacks are left out)."""
    _a_folder(lora, where, "a PEFT adapter folder; a GGUF LoRA goes with the llama_cpp backend")
    try:
        config = json.loads((lora / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise TskdError(f"{where}: {lora} holds no readable {ADAPTER_CONFIG} (expected a PEFT adapter folder)")
    if config.get("peft_type", "LORA") != "LORA":
        raise TskdError(f"{where}: {lora} is a {config['peft_type']} adapter; only LoRA adapters are loaded")
    if not (lora / ADAPTER_WEIGHTS).is_file():
        raise TskdError(
            f"{where}: {lora} holds no {ADAPTER_WEIGHTS} (pickled .bin adapters are never loaded: convert them)"
        )
    adapter = safetensors_shapes(lora / ADAPTER_WEIGHTS, where)
    base: dict[str, tuple[int, ...]] = {}
    for path in sorted(model.glob("*.safetensors")):
        base |= safetensors_shapes(path, where)
    for key in sorted(k for k in adapter if k.endswith(".lora_A.weight")):
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        a, b = adapter[key], adapter.get(key.replace(".lora_A.", ".lora_B."))
        if b is None or len(a) != 2 or len(b) != 2:
            raise TskdError(f"{where}: {lora} is damaged ({module}: lora_A {a}, lora_B {b})")
        found = _counterpart(module, base)
        if found is None:
            raise TskdError(
                f"{where}: {lora} adapts {module}, which {model} does not have (an adapter made for another model?)"
            )
        if found == "ambiguous":
            continue
        have = found[::-1] if config.get("fan_in_fan_out") else found  # GPT-2's Conv1D keeps weights as in x out
        if tuple(have) != (b[0], a[1]):
            raise TskdError(
                f"{where}: {lora} does not fit {model}: {module} maps {a[1]} to {b[0]} features in the adapter, "
                f"{have[1]} to {have[0]} in the model (an adapter made for another model?)"
            )


def _counterpart(module: str, base: dict[str, tuple[int, ...]]):
    """The shape of the weight `module` adapts; "ambiguous" where several could be it (left to PEFT's load), None
    where none is. Checkpoints name modules with different prefixes (model.language_model.layers... for
    model.layers...), so leading parts may go, never the layer number: a layer the model lacks is not found."""
    parts = module.split(".")
    digits = [i for i, part in enumerate(parts) if part.isdigit()]
    for i in range(max(digits[0], 1) if digits else len(parts)):
        tail = ".".join(parts[i:]) + ".weight"
        found = [name for name in base if name == tail or name.endswith("." + tail)]
        if len(found) == 1:
            return base[found[0]]
        if found:
            return "ambiguous"
    if parts[-1] == "lm_head":  # tied embeddings: the output layer is the input embedding, saved once
        return _counterpart(".".join([*parts[:-1], "embed_tokens"]), base)
    return None


def tokenizer_fingerprint(model: Path) -> str:
    """Hash of what splits text into tokens: tokenizer.json's normalizer, pre-tokenizer, model (vocabulary and
    merges), added tokens and post-processor, with tokenizer_config.json's BOS and EOS switches; else the bytes of
    the files a sentencepiece or slow tokenizer reads. Folders saved from one tokenizer get one fingerprint."""
    digest = hashlib.sha256()

    def read_json(name: str) -> dict:
        try:
            data = json.loads((model / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    fast = read_json("tokenizer.json")
    for key in ("normalizer", "pre_tokenizer", "model", "added_tokens", "post_processor"):
        digest.update(json.dumps(fast.get(key), sort_keys=True).encode())
    config = read_json("tokenizer_config.json")
    digest.update(json.dumps([config.get("add_bos_token"), config.get("add_eos_token")]).encode())
    if not fast:
        for name in ("tokenizer.model", "vocab.json", "merges.txt"):
            if (model / name).is_file():
                digest.update(name.encode() + (model / name).read_bytes())
    return digest.hexdigest()[:16]


def quiet_transformers() -> None:
    """transformers' per-load progress bars and advice would drown tskd-lite's own progress output."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    # bitsandbytes' Hub-kernel warning is dropped by tskd_lite/__init__.py, before anything imports peft


def nf4_config(compute_dtype):
    """4-bit NF4 weights with double quantization (QLoRA's), computing in compute_dtype."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_hf(
    model_dir: Path,
    *,
    lora: Path | None = None,
    lora_scale: float = 1.0,
    dtype: str = "auto",
    device: str | None = None,
    role: str = "target",
):
    """(tokenizer, model) of a safetensors folder for inference, optionally with a PEFT adapter: the one loader of
    the target's evaluation and replay, the transformers backend and `convert`. dtype "auto" is float32 on the CPU
    and bfloat16 on a CUDA GPU that has it; "nf4" is 4-bit weights (bitsandbytes). device: "cpu", else CUDA where
    there is one.

    The adapter is merged into float32 weights (what training's merged model is); beside bfloat16 or 4-bit weights
    it stays a separate matrix pair, since merging would round its small update away. A load that fails (an
    architecture transformers lacks, an adapter that does not fit) is one line naming the role's key."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    cuda = device != "cpu" and torch.cuda.is_available()
    half = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    weights = half if dtype in ("auto", "nf4") else getattr(torch, dtype)
    kwargs: dict = {"dtype": weights, "device_map": {"": 0 if cuda else "cpu"}}
    if dtype == "nf4":
        kwargs["quantization_config"] = nf4_config(weights)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise TskdError(f"{role}.model: transformers could not load {model_dir} ({_brief(e)})") from None
    if lora is not None:
        model = with_adapter(
            model, lora, lora_scale, merge=weights == torch.float32 and dtype != "nf4", where=f"{role}.lora"
        )
    return tokenizer, model.eval()


def with_adapter(model, lora: Path, scale: float = 1.0, *, merge: bool, where: str = "lora"):
    """model with the PEFT adapter in folder `lora`, its update times `scale` (as llama.cpp's adapter scale),
    merged into the weights where asked; one line naming `where` for an adapter that does not fit."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    try:
        model = PeftModel.from_pretrained(model, lora)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise TskdError(f"{where}: transformers could not apply the adapter {lora} ({_brief(e)})") from None
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(scale)
    return (model.merge_and_unload() if merge else model).eval()


def _brief(e: Exception) -> str:
    """An exception's message on one line, cut short (a size mismatch lists every tensor)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
