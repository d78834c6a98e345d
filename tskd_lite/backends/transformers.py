"""A Hugging Face folder (safetensors only) in-process through transformers, optionally with a PEFT LoRA adapter
folder: teachers and bases as users have them, with no conversion to GGUF. backend = "transformers".

Weights: float32 on the CPU, bfloat16 on a CUDA GPU that has it, or 4-bit NF4 (the `dtype` key), loaded by
hf.load_hf, the loader of the target's evaluation and replay too; a PEFT adapter is merged into float32 weights.

Text in and out as llama_cpp has it (backends/llama_cpp.py), so that on the same weights the two keep the same
pool: the chat template (the recipe's, else the folder's own) is rendered in the same jinja2 sandbox with the
tokenizer's BOS and EOS texts; prompt and answer are tokenized apart (special tokens read in the prompt, the
answer taken as plain text) and joined; a BOS the template writes itself is not doubled.

Batches: `parallel` sequences per forward call, left-padded so that every sequence ends at the same column, with
positions counted from each one's first real token. Scoring asks the output layer for the last (longest answer + 1)
columns only (with a 262k vocabulary it costs more than the rest of the model) and takes a float64 log-softmax per
answer. Generation decodes a group together over a KV cache; each sequence samples from its own torch generator
seeded with its item's seed (top-p, then temperature, as llama_cpp's sampler chain), so a reply depends on its seed
and its group only. Groups are formed as llama_cpp forms them (`parallel` at a time, fewer where the logits would
pass LOGIT_BUDGET): padding changes the shapes of the products, and so can change the last bits of a result.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from tskd_lite import gguf_meta
from tskd_lite.backends.base import (
    BACKENDS,
    ChatTurns,
    Generation,
    InGroups,
    Scored,
    check_in_process,
    in_groups,
)
from tskd_lite.backends.llama_cpp import LOGIT_BUDGET
from tskd_lite.errors import TskdError
from tskd_lite.hf import ADAPTER_CONFIG, check_adapter, check_hf_folder, load_hf, tokenizer_fingerprint

if TYPE_CHECKING:
    from tskd_lite.recipe import ModelSpec


@BACKENDS.register("transformers")
class Transformers(InGroups, ChatTurns):
    """A Backend (backends/base.py) with llama_cpp's token-level abilities besides: tokenize_prompt,
    tokenize_answer and score (on token ids)."""

    runtime = "transformers"  # how evaluation rows name where they ran

    @classmethod
    def check(cls, spec: ModelSpec, where: str) -> None:
        check_in_process(spec, where)
        if spec.requantize is not None:
            raise TskdError(f'{where}.requantize: only backend = "llama_cpp" takes it (it re-encodes a GGUF)')
        check_hf_folder(spec.model, f"{where}.model", tokenizer=True)
        if spec.lora is not None:
            check_adapter(spec.lora, spec.model, f"{where}.lora")

    @classmethod
    def identities(cls, spec: ModelSpec, role: str) -> dict[str, str]:
        out = {f"{role}.model": gguf_meta.identity(spec.model)}  # a folder: its safetensors files
        if spec.lora is not None:
            # the config holds alpha and the adapted modules: part of what the adapter does
            config = gguf_meta.identity(spec.lora / ADAPTER_CONFIG)
            out[f"{role}.lora"] = f"{gguf_meta.identity(spec.lora)},{config}"
        return out

    @classmethod
    def tokenizer_identity(cls, spec: ModelSpec) -> str:
        return "transformers:" + tokenizer_fingerprint(spec.model)

    def __init__(self, spec: ModelSpec, *, role: str, threads: int = 0, parallel: int = 8) -> None:
        import torch

        self.check(spec, role)  # a backend opened without a recipe gets the recipe's one-line refusals too
        self.role, self.spec, self.parallel = role, spec, parallel
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no thread count per model
        self.tokenizer, self.model = load_hf(
            spec.model, lora=spec.lora, lora_scale=spec.lora_scale, dtype=spec.dtype, role=role
        )
        tok = self.tokenizer
        self.device = self.model.device
        self.bos_id = tok.bos_token_id
        self.bos_text, self.eos_text = tok.bos_token or "", tok.eos_token or ""
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.n_vocab = self.model.config.get_text_config().vocab_size
        ends = getattr(self.model.generation_config, "eos_token_id", None)
        # every end of turn the model may write (an instruct model's generation config lists them), as llama.cpp's
        # end-of-generation test takes its EOS and EOT tokens
        self.stop_ids = {*(ends if isinstance(ends, list) else [ends]), tok.eos_token_id} - {None}
        self._template = None

    # text and tokens ----------------------------------------------------------------------------------------

    def tokenize_prompt(self, rendered: str) -> list[int]:
        tokens = self.tokenizer(rendered, add_special_tokens=True)["input_ids"]
        # Templates that write the BOS text themselves would otherwise get it twice.
        if self.bos_id is not None and len(tokens) > 1 and tokens[0] == tokens[1] == self.bos_id:
            tokens = tokens[1:]
        return tokens

    def tokenize_answer(self, answer: str) -> list[int]:
        return self._answer(answer, byte_ends=False)[0]

    def _answer(self, answer: str, byte_ends: bool) -> tuple[list[int], list[int]]:
        """The answer's tokens (a special token's text in it is plain text, as llama.cpp reads an answer) and, where
        asked, where each ends in the answer's bytes, clamped to its length as llama_cpp's are."""
        enc = self.tokenizer(
            answer, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=byte_ends
        )
        if not byte_ends:
            return enc["input_ids"], []
        n_bytes = len(answer.encode("utf-8"))
        raw = [len(answer[:end].encode("utf-8")) for _, end in enc["offset_mapping"]]
        ends: list[int] = []
        for i, end in enumerate(raw):
            prev = ends[-1] if ends else 0
            # Offsets count characters: the tokens of one character split into bytes all end where it ends. All but
            # its last hold one byte each, as a byte-level tokenizer splits it (at most a byte off within it).
            if i + 1 < len(raw) and raw[i + 1] == end:
                end = prev + 1
            ends.append(min(max(end, prev), n_bytes))
        return enc["input_ids"], ends

    def _check_fits(self, n_tokens: int, what: str) -> None:
        if n_tokens > self.spec.n_ctx:
            raise TskdError(
                f"{self.role}.n_ctx: {what} takes {n_tokens} tokens, more than n_ctx = {self.spec.n_ctx}; "
                f"raise {self.role}.n_ctx"
            )

    def _left_padded(self, sequences: list[list[int]]):
        """(ids, attention mask, positions) of sequences padded on the left to one width: each one's last token in
        the last column, its positions counted from its own first token."""
        import torch

        width = max(map(len, sequences))
        ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in sequences], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=self.device)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    # scoring -----------------------------------------------------------------------------------------------

    def score_answers(self, pairs: Sequence[tuple[str, str]], *, byte_ends: bool = False) -> list[Scored]:
        answers = [self._answer(answer, byte_ends) for _, answer in pairs]
        ids = [(self.tokenize_prompt(rendered), tail) for (rendered, _), (tail, _) in zip(pairs, answers, strict=True)]
        return [
            Scored(lp, ends, len(head) + len(tail))
            for lp, (head, tail), (_, ends) in zip(self.score(ids), ids, answers, strict=True)
        ]

    def score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """log p of each answer token after its prompt, for (prompt ids, answer ids) pairs, `parallel` at a time."""
        for prompt, answer in pairs:
            self._check_fits(len(prompt) + len(answer), "prompt and answer")
        max_rows = max(1, LOGIT_BUDGET // self.n_vocab)

        def fits(group: list) -> bool:  # every sequence of a group gets as many logit rows as its longest answer needs
            return len(group) * (max(len(a) for _, a in group) + 1) <= max_rows

        return [lp for group in in_groups(pairs, self.parallel, fits) for lp in self._score_group(group)]

    def _score_group(self, group: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        import torch

        keep = max(len(answer) for _, answer in group) + 1
        ids, mask, positions = self._left_padded([prompt + answer for prompt, answer in group])
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
            out = []
            for row, (_, answer) in zip(logits, group, strict=True):
                # column j's logits predict token j + 1: an answer's are the len(answer) columns before the last
                rows = row[keep - 1 - len(answer) : keep - 1].double()
                targets = torch.tensor(answer, dtype=torch.long, device=rows.device)[:, None]
                out.append(torch.log_softmax(rows, -1).gather(1, targets)[:, 0].cpu().numpy())
        return out

    # generation --------------------------------------------------------------------------------------------

    def _generate_group(self, prompts, max_tokens, temperature, top_p, seeds) -> list[Generation]:
        import torch

        ids, mask, positions = self._left_padded(prompts)
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        budgets = [min(max_tokens, self.spec.n_ctx - len(p)) for p in prompts]
        outs: list[list[int]] = [[] for _ in prompts]
        finish = ["length"] * len(prompts)
        live, cache = set(range(len(prompts))), None
        with torch.no_grad():
            while live:
                step = self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                cache, last = step.past_key_values, step.logits[:, -1, :]
                for seq in sorted(live):
                    token = _sample(last[seq], temperature, top_p, generators[seq])
                    if token in self.stop_ids:
                        finish[seq] = "stop"
                        live.discard(seq)
                        continue
                    outs[seq].append(token)
                    if len(outs[seq]) >= budgets[seq]:
                        live.discard(seq)
                # the next column: each live sequence's new token; a finished one's column is masked out
                column = [[outs[s][-1] if s in live else self.pad_id] for s in range(len(prompts))]
                ids = torch.tensor(column, device=self.device)
                mask = torch.cat([mask, torch.tensor([[int(s in live)] for s in range(len(prompts))]).to(mask)], 1)
                positions = torch.tensor([[len(p) + len(o) - 1] for p, o in zip(prompts, outs, strict=True)]).to(mask)
        return [
            Generation(text=self._text(p, o), n_tokens=len(o), finish_reason=f)
            for p, o, f in zip(prompts, outs, finish, strict=True)
        ]

    def _text(self, prompt: list[int], reply: list[int]) -> str:
        """The reply's text as it continues the prompt (a tokenizer that drops a word's leading space at the start
        of a text keeps it here), without special tokens and without the bytes of an unfinished character, as
        llama_cpp writes it."""

        def decode(tokens: list[int]) -> str:
            return self.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

        head, full = decode(prompt), decode(prompt + reply)
        text = full[len(head) :] if full.startswith(head) else decode(reply)
        return text.replace("\ufffd", "")

    def close(self) -> None:
        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _sample(logits, temperature: float, top_p: float, generator) -> int:
    """The next token: greedy at temperature 0, else top-p over the model's own probabilities, then the temperature,
    then a draw from the sequence's generator (on the CPU, so a seed gives one reply on any device)."""
    import torch

    if temperature == 0:
        return int(torch.argmax(logits))
    logits = logits.double().cpu()
    if top_p < 1:
        probs = torch.softmax(logits, -1)
        order = torch.argsort(probs, descending=True)
        # the fewest likeliest tokens whose probability reaches top_p (at least one)
        n = int(torch.searchsorted(torch.cumsum(probs[order], 0), torch.tensor(top_p, dtype=probs.dtype))) + 1
        kept = torch.full_like(logits, float("-inf"))
        kept[order[:n]] = logits[order[:n]]
        logits = kept
    return int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator))
