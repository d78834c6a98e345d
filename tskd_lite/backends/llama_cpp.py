"""The default backend: a GGUF model (and GGUF LoRA) in-process through llama-cpp-python; chat template,
batched generation and batched answer log-probs.

The only module that reaches into llama-cpp-python's internals, and why: the public `Llama` API decodes one
sequence per context and returns logits for every position or the last; scoring needs several sequences in one
context (`_internals.LlamaContext` with n_seq_max and a KV stream per sequence, `LlamaBatch` with per-token
sequence ids and logits flags), logits at chosen positions only (`llama_get_logits` read through ctypes), the
model handle and the LoRA adapter the `Llama` object loaded (`llm._model`, `llm._lora_adapter`, applied to our
own context with `llama_set_adapters_lora`), cache copies between sequences (`llama_memory_seq_cp`) and seeded
per-sequence samplers (`_internals.LlamaSampler`). Re-encoding weights (`quantize`) uses the C API's
`llama_model_quantize`, which has no `Llama` counterpart. This is why pyproject.toml pins llama-cpp-python.

Both jobs run on one llama.cpp context that holds `parallel` sequences, each in its own KV-cache stream, so
several prompts are decoded per call instead of one: generating one token for one sequence reads every weight for
one row of work, while eight sequences share that read. Scoring asks for logits only at the positions that
predict answer tokens (no vocabulary-wide row for any prompt token). The prompt prefix that a group's members
share (the chat template's system header, a prompt-writing instruction) is decoded once and its cache copied to
the other sequences. The same code serves parallel = 1, the one-at-a-time path the benchmark compares against.

A group's results depend only on the group (its members and their order), never on what ran before, since the
cache is cleared per group: callers that commit whole groups get bit-identical results after a resume. On
quantized weights llama.cpp's kernels round differently with the batch's shape, so `parallel` itself changes
log-probs by a few hundredths of a nat and can change greedy replies; it is part of the recipe for that reason.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
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
from tskd_lite.errors import TskdError

if TYPE_CHECKING:
    from tskd_lite.recipe import ModelSpec

# Scoring copies out one vocabulary-wide row of logits per answer token; this caps those rows per decode call
# (about 256 MB of float32 whatever the vocabulary: 256 rows of Gemma 3's 262k tokens, 1365 of SmolLM2's 49k).
LOGIT_BUDGET = 1 << 26


@BACKENDS.register("llama_cpp")
class LlamaCpp(InGroups, ChatTurns):
    """A Backend (backends/base.py) with token-level abilities besides: tokenize_prompt, tokenize_answer, score
    (on token ids), answer_byte_ends, detokenize and the count of tokens decoded."""

    runtime = "llama.cpp"  # how evaluation rows name where they ran

    @classmethod
    def check(cls, spec: ModelSpec, where: str) -> None:
        check_in_process(spec, where)
        if spec.dtype != "auto":
            raise TskdError(f'{where}.dtype: only backend = "transformers" takes it (a GGUF has its own types)')
        # Hugging Face files where a GGUF goes, the likeliest mistake with one's own models: say what takes them.
        if spec.model.is_dir():
            raise TskdError(
                f'{where}.model: {spec.model} is a folder; a Hugging Face model needs backend = "transformers"'
            )
        gguf_meta.check_gguf(spec.model, f"{where}.model")
        if spec.lora is not None:
            if spec.lora.is_dir():
                raise TskdError(
                    f'{where}.lora: {spec.lora} is a folder; a PEFT adapter needs backend = "transformers", or '
                    "`tskd-lite convert` to make it a GGUF LoRA"
                )
            gguf_meta.check_gguf(spec.lora, f"{where}.lora")

    @classmethod
    def identities(cls, spec: ModelSpec, role: str) -> dict[str, str]:
        files = {"model": spec.model, "lora": spec.lora}
        return {f"{role}.{key}": gguf_meta.identity(path) for key, path in files.items() if path is not None}

    @classmethod
    def tokenizer_identity(cls, spec: ModelSpec) -> str:
        return "llama_cpp:" + gguf_meta.vocab_fingerprint(spec.model)

    def __init__(self, spec: ModelSpec, *, role: str, threads: int = 0, parallel: int = 8) -> None:
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._utils import suppress_stdout_stderr

        self.role, self.spec, self.parallel = role, spec, parallel
        self._template = None
        self._llama_cpp = llama_cpp
        try:
            # llama.cpp prints notices at load (SWA cache, LoRA buffer fallbacks) whatever the verbosity;
            # a failed load still raises, with its reason, below.
            with suppress_stdout_stderr(disable=False):
                # The Llama object provides the model, vocabulary and LoRA adapter; its own small context is unused.
                self.llm = llama_cpp.Llama(
                    model_path=str(spec.model),
                    lora_path=str(spec.lora) if spec.lora else None,
                    lora_scale=spec.lora_scale,
                    n_ctx=64,
                    # llama-cpp-python's default is half the cores for generation; this machine class has 2.
                    n_threads=threads or os.cpu_count(),
                    n_threads_batch=threads or os.cpu_count(),
                    verbose=False,
                )
                params = type(self.llm.context_params).from_buffer_copy(self.llm.context_params)
                params.n_ctx = params.n_batch = spec.n_ctx * parallel
                params.n_ubatch = 512
                params.n_seq_max = parallel
                params.kv_unified = False  # one cache stream per sequence: attention stays within its own sequence
                self._ctx = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise TskdError(f"{role}.model: llama.cpp could not load {spec.model} ({e})") from None
        if self.llm._lora_adapter is not None:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.llm._lora_adapter)
            scales = (ctypes.c_float * 1)(spec.lora_scale)
            if llama_cpp.llama_set_adapters_lora(self._ctx.ctx, adapters, 1, scales):
                raise TskdError(f"{role}.lora: llama.cpp could not apply {spec.lora}")
        self._batch = _internals.LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.decoded = 0  # tokens run through the model so far; fewer than requested where prefixes were shared
        self.n_vocab = self.llm.n_vocab()
        self.bos_id = self.llm.token_bos()
        self.bos_text = self._piece(self.bos_id)
        self.eos_text = self._piece(self.llm.token_eos())

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    # text and tokens ----------------------------------------------------------------------------------------

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    def tokenize_prompt(self, rendered: str) -> list[int]:
        tokens = self.llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)
        # Templates that write the BOS text themselves would otherwise get it twice.
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.bos_id:
            tokens = tokens[1:]
        return tokens

    def tokenize_answer(self, answer: str) -> list[int]:
        return self.llm.tokenize(answer.encode("utf-8"), add_bos=False, special=False)

    def answer_byte_ends(self, answer_tokens: list[int], answer: str) -> list[int]:
        """Where each answer token ends, in bytes of the answer: lets other tokenizers line up with these tokens.
        A tokenizer that prefixes a space counts it too, so ends are clamped to the answer's length."""
        n_bytes, total, ends = len(answer.encode("utf-8")), 0, []
        for token in answer_tokens:
            total += len(self.llm.detokenize([token]))
            ends.append(min(total, n_bytes))
        return ends

    # the batch ---------------------------------------------------------------------------------------------

    def _clear(self) -> None:
        self._llama_cpp.llama_memory_clear(self._ctx.memory, True)
        self._batch.batch.n_tokens = 0

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token to the batch; return its index there (where its logits will be)."""
        b = self._batch.batch
        i = b.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.seq_id[i][0], b.logits[i] = token, pos, 1, seq, logits
        b.n_tokens = i + 1
        self.decoded += 1
        return i

    def _share_prefix(self, prompts: Sequence[list[int]]) -> int:
        """Decode the prompts' common prefix once, in sequence 0, and copy its cache to the group's other sequences;
        return its length. Each prompt keeps at least its last token, whose logits its caller needs."""
        if len(prompts) < 2:
            return 0
        limit = min(len(p) for p in prompts) - 1
        n = 0
        while n < limit and all(p[n] == prompts[0][n] for p in prompts):
            n += 1
        if n == 0:
            return 0
        for pos in range(n):
            self._add(prompts[0][pos], pos, 0, False)
        self._decode()
        for seq in range(1, len(prompts)):
            # One KV stream per sequence: the whole stream is copied, on the next decode, before it runs.
            self._llama_cpp.llama_memory_seq_cp(self._ctx.memory, 0, seq, -1, -1)
        return n

    def _decode(self) -> None:
        self._ctx.decode(self._batch)
        self._batch.batch.n_tokens = 0

    def _check_fits(self, n_tokens: int, what: str) -> None:
        if n_tokens > self.spec.n_ctx:
            raise TskdError(
                f"{self.role}.n_ctx: {what} takes {n_tokens} tokens, more than n_ctx = {self.spec.n_ctx}; "
                f"raise {self.role}.n_ctx"
            )

    # scoring -----------------------------------------------------------------------------------------------

    def answer_logprobs(self, rendered: str, answer: str) -> np.ndarray:
        """log p(answer token i | prompt, answer tokens < i) for each token of the answer."""
        return self.score([(self.tokenize_prompt(rendered), self.tokenize_answer(answer))])[0]

    def score_answers(self, pairs: Sequence[tuple[str, str]], *, byte_ends: bool = False) -> list[Scored]:
        ids = [(self.tokenize_prompt(rendered), self.tokenize_answer(answer)) for rendered, answer in pairs]
        return [
            Scored(lp, self.answer_byte_ends(tail, answer) if byte_ends else [], len(head) + len(tail))
            for lp, (head, tail), (_, answer) in zip(self.score(ids), ids, pairs, strict=True)
        ]

    def score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """answer_logprobs for many (prompt ids, answer ids) pairs, decoded `parallel` sequences at a time."""
        for prompt, answer in pairs:
            self._check_fits(len(prompt) + len(answer), "prompt and answer")
        max_rows = max(1, LOGIT_BUDGET // self.n_vocab)

        def fits(group: list) -> bool:  # a logit row for each answer token of the group
            return sum(len(a) for _, a in group) <= max_rows

        return [lp for group in in_groups(pairs, self.parallel, fits) for lp in self._score_group(group)]

    def _score_group(self, group: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        self._clear()
        shared = self._share_prefix([prompt for prompt, _ in group])
        targets = []
        for seq, (prompt, answer) in enumerate(group):
            tokens = prompt + answer
            first = len(prompt) - 1  # the logits at position j predict token j + 1
            for pos in range(shared, len(tokens)):
                self._add(tokens[pos], pos, seq, first <= pos < len(tokens) - 1)
            targets += answer
        if not targets:
            return [np.empty(0) for _ in group]
        self._decode()
        # Outputs come back contiguous, in batch order: exactly the answer-predicting positions, pair by pair.
        logits = np.ctypeslib.as_array(
            ctypes.cast(self._llama_cpp.llama_get_logits(self._ctx.ctx), ctypes.POINTER(ctypes.c_float)),
            shape=(len(targets), self.n_vocab),
        )
        lp = np.empty(len(targets))
        for start in range(0, len(targets), 64):  # float64 log-softmax, 64 rows at a time to bound memory
            chunk = logits[start : start + 64].astype(np.float64)
            top = chunk.max(axis=1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(chunk - top).sum(axis=1))
            idx = np.arange(len(chunk))
            lp[start : start + len(chunk)] = chunk[idx, targets[start : start + len(chunk)]] - lse
        ends = np.cumsum([len(answer) for _, answer in group])
        return np.split(lp, ends[:-1])

    # generation --------------------------------------------------------------------------------------------

    def _sampler(self, temperature: float, top_p: float, seed: int):
        from llama_cpp import _internals

        sampler = _internals.LlamaSampler()
        if temperature == 0:
            sampler.add_greedy()
        else:
            sampler.add_top_p(top_p, 1)
            sampler.add_temp(temperature)
            sampler.add_dist(seed)
        return sampler

    def _generate_group(self, prompts, max_tokens, temperature, top_p, seeds) -> list[Generation]:
        self._clear()
        shared = self._share_prefix(prompts)
        at = {}  # sequence -> batch index of the logits to sample its next token from
        for seq, prompt in enumerate(prompts):
            for pos in range(shared, len(prompt)):
                at[seq] = self._add(prompt[pos], pos, seq, pos == len(prompt) - 1)
        self._decode()
        samplers = [self._sampler(temperature, top_p, seed) for seed in seeds]
        budgets = [min(max_tokens, self.spec.n_ctx - len(p)) for p in prompts]
        outs: list[list[int]] = [[] for _ in prompts]
        finish = ["length"] * len(prompts)
        vocab = self.llm._model.vocab
        while at:
            sampled = {seq: samplers[seq].sample(self._ctx, i) for seq, i in at.items()}
            at = {}
            for seq, token in sampled.items():
                if self._llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish[seq] = "stop"
                    continue
                outs[seq].append(token)
                if len(outs[seq]) < budgets[seq]:
                    at[seq] = self._add(token, len(prompts[seq]) + len(outs[seq]) - 1, seq, True)
            if at:
                self._decode()
        for sampler in samplers:
            sampler.close()
        return [
            Generation(
                text=self.llm.detokenize(o, prev_tokens=p).decode("utf-8", errors="ignore"),
                n_tokens=len(o),
                finish_reason=f,
            )
            for o, p, f in zip(outs, prompts, finish, strict=True)
        ]

    def close(self) -> None:
        self._ctx.close()
        self.llm.close()


def quantize(src: Path, dst: Path, kind: str, threads: int) -> bool:
    """Re-encode src's weights as `kind` ("q8_0", "q4_0", "f16") into dst; whether llama.cpp succeeded."""
    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")
    params.allow_requantize = True  # the source is usually quantized already
    params.nthread = threads or os.cpu_count() or 1
    with suppress_stdout_stderr(disable=False):  # llama.cpp logs every tensor
        return not llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
