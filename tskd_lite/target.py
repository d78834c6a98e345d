"""The target model in transformers: GGUF to cached safetensors, and (prompt, answer) to training tokens.

Training, evaluation of the target and the GGUF LoRA export all go through here, so the prompt the target is
trained on is exactly the prompt it is evaluated on.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tskd_lite.errors import TskdError

# quiet_transformers is imported from here by training, evaluation and bench/
from tskd_lite.hf import load_hf, quiet_transformers  # noqa: F401
from tskd_lite.recipe import SOURCE_MARKER, Target, check_cache

PLAIN_TEMPLATE = "Question: {prompt}\nAnswer:"


def hf_dir(target: Target, log=print) -> Path:
    """A Hugging Face folder for the target; a GGUF is dequantized once and cached as safetensors. Processes that
    share a target take turns (a lock beside the cache): the second finds the first's conversion and reuses it."""
    if target.model.is_dir():
        return target.model
    from tskd_lite import locks
    from tskd_lite.gguf_meta import identity

    cache = target.cache_dir
    check_cache(target, "target.cache")
    source = {"gguf": str(target.model), "identity": identity(target.model)}
    if _made_from(cache) == source["identity"]:
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    waiting = lambda: log(f"{cache}: another process is converting this target; waiting for it")  # noqa: E731
    with locks.held(cache, "", wait=waiting):
        if _made_from(cache) == source["identity"]:  # converted while this process waited
            return cache
        check_cache(target, "target.cache")
        _remove_leftovers(cache)
        _convert(target, cache, source, log)
    return cache


def _remove_leftovers(cache: Path) -> None:
    """Folders a killed conversion left beside the cache (each holds the marker it was made with)."""
    for folder in [*cache.parent.glob(f".{cache.name}.part-*"), *cache.parent.glob(f".{cache.name}.old-*")]:
        if folder.is_dir() and any((folder / m).is_file() for m in (_PART_MARKER, SOURCE_MARKER)):
            shutil.rmtree(folder, ignore_errors=True)


_PART_MARKER = ".tskd-part"


def _made_from(cache: Path) -> str | None:
    try:
        return json.loads((cache / SOURCE_MARKER).read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return None


def _convert(target: Target, cache: Path, source: dict, log) -> None:
    """Write the conversion into a fresh folder beside the cache, then swap it in (under the caller's lock): the
    cache appears whole or not at all, and an old conversion is removed only after it has been moved aside."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cache.exists():
        log(f"{cache} is not a conversion of {target.model} as it is now; converting again")
    log(f"converting {target.model.name} to safetensors in {cache} (once)")
    tokenizer = AutoTokenizer.from_pretrained(target.model.parent, gguf_file=target.model.name)
    model = AutoModelForCausalLM.from_pretrained(target.model.parent, gguf_file=target.model.name, dtype=torch.float32)
    # A model loaded from GGUF carries a quantizer that refuses to save; the dequantized weights are plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    part = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.part-"))
    try:
        (part / _PART_MARKER).touch()  # so that a kill's leftover is known as ours
        model.save_pretrained(part)
        tokenizer.save_pretrained(part)
        (part / SOURCE_MARKER).write_text(json.dumps(source))
        (part / _PART_MARKER).unlink()
        if cache.exists():  # our own stale conversion (check_cache said so): aside first, then gone
            old = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}.old-"))
            cache.rename(old)
            shutil.rmtree(old)
        part.rename(cache)
    finally:
        shutil.rmtree(part, ignore_errors=True)


def answer_logprobs(model, head: list[int], tail: list[int]):
    """log p(tail token i | head, tail < i) under a transformers model, as float64 numpy. The output layer runs
    only where a tail token is predicted (with a 262k vocabulary, it costs more than the rest of the model)."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([head + tail]), logits_to_keep=len(tail) + 1).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tail)[:, None])[:, 0].numpy()


@dataclass(frozen=True)
class Formatter:
    """Renders pairs with the target's chat template, or the plain template for models without one."""

    tokenizer: object
    template: str | None  # None: plain template

    @classmethod
    def for_target(cls, tokenizer, target: Target) -> Formatter:
        template = target.chat_template or getattr(tokenizer, "chat_template", None)
        return cls(tokenizer, template)

    @property
    def kind(self) -> str:
        return "chat template" if self.template else f"plain template {PLAIN_TEMPLATE!r}"

    def prompt_text(self, prompt: str) -> str:
        if self.template is None:
            return PLAIN_TEMPLATE.format(prompt=prompt)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=True,
        )

    def answer_text(self, prompt: str, answer: str) -> str:
        """What follows the prompt text in a full conversation, end-of-turn marker included."""
        if self.template is None:
            return " " + answer + (self.tokenizer.eos_token or "")
        head = self.prompt_text(prompt)
        full = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            chat_template=self.template,
            tokenize=False,
        )
        if not full.startswith(head):
            raise TskdError("target chat template: the conversation does not start with the generation prompt")
        return full[len(head) :]

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.prompt_text(prompt)
        bos = getattr(self.tokenizer, "bos_token", None)
        # Templates that write the BOS text themselves must not get a second one from the tokenizer.
        add_special = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def encode(
        self,
        prompt: str,
        answer: str,
        max_len: int,
        keep: list[tuple[int, int]] | None = None,
        template_loss: bool = True,
    ) -> tuple[list[int], list[int]] | None:
        """(input_ids, labels) with labels -100 on the prompt; None where the prompt alone fills max_len.

        keep: byte spans of the answer that carry the loss (token-level selection); answer tokens outside every
        span get -100. template_loss: whether template tokens around the answer (end of turn) carry it too.
        """
        head = self.prompt_ids(prompt)
        if len(head) >= max_len:
            return None
        text = self.answer_text(prompt, answer)
        partial = keep is not None or not template_loss
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=partial)
        tail, labels = enc["input_ids"], list(enc["input_ids"])
        if partial:
            start = text.find(answer)  # templates that rewrite the answer fall back to its start
            offset = len(text[: max(start, 0)].encode())
            n_answer = len(answer.encode())
            spans = keep if keep is not None else [(0, n_answer)]
            for j, (c0, c1) in enumerate(enc["offset_mapping"]):
                b0, b1 = len(text[:c0].encode()) - offset, len(text[:c1].encode()) - offset
                in_answer = b1 > 0 and b0 < n_answer
                if in_answer and not any(b0 < end and begin < b1 for begin, end in spans):
                    labels[j] = -100
                elif not in_answer and not template_loss:
                    labels[j] = -100
        ids = (head + tail)[:max_len]
        return ids, ([-100] * len(head) + labels)[:max_len]


def load_fp32(model_dir: Path):
    """(tokenizer, model) of a safetensors folder in fp32 on the CPU: what evaluation and replay generate with."""
    return load_hf(model_dir, dtype="float32", device="cpu", role="target")


def greedy_answers(
    model,
    tokenizer,
    fmt: Formatter,
    prompts: list[str],
    max_tokens: int,
    *,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """The model's greedy replies to prompts in the target's template, batch by batch: evaluation's predictions and
    replay's answers are the same generation."""
    import torch
    from tqdm import tqdm

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    replies = []
    with torch.no_grad():
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
            heads = [fmt.prompt_ids(p) for p in prompts[start : start + batch_size]]
            width = max(map(len, heads))
            # Left padding keeps every prompt's last token at the same column, where generation continues.
            ids = torch.tensor([[pad] * (width - len(h)) + h for h in heads])
            mask = torch.tensor([[0] * (width - len(h)) + [1] * len(h) for h in heads])
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad
            )
            replies += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return replies
