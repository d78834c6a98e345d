"""A GGUF model served in-process by llama.cpp: chat template, generation and answer log-probs.

Scoring decodes the prompt and answer in one pass and asks llama.cpp for logits only at the positions that
predict answer tokens, so no full-vocabulary row is produced for prompt tokens (logits_all stays off).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import numpy as np

from tskd_lite.chat import compile_template
from tskd_lite.errors import TskdError
from tskd_lite.recipe import ModelSpec


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    finish_reason: str  # "stop": the model ended its turn; "length": the token budget ran out


class Engine:
    def __init__(self, spec: ModelSpec, *, role: str, threads: int = 0) -> None:
        import llama_cpp

        self.role = role
        self.spec = spec
        self._template = None
        from llama_cpp._utils import suppress_stdout_stderr

        try:
            # llama.cpp prints notices at load (SWA cache, LoRA buffer fallbacks) whatever the verbosity;
            # a failed load still raises, with its reason, below.
            with suppress_stdout_stderr(disable=False):
                self.llm = llama_cpp.Llama(
                    model_path=str(spec.model),
                    lora_path=str(spec.lora) if spec.lora else None,
                    lora_scale=spec.lora_scale,
                    n_ctx=spec.n_ctx,
                    # llama-cpp-python's default is half the cores for generation; this machine class has 2.
                    n_threads=threads or os.cpu_count(),
                    n_threads_batch=threads or os.cpu_count(),
                    verbose=False,
                )
        except (ValueError, RuntimeError) as e:
            raise TskdError(f"{role}.model: llama.cpp could not load {spec.model} ({e})") from None
        self._llama_cpp = llama_cpp
        self.n_vocab = self.llm.n_vocab()
        self.bos_id = self.llm.token_bos()
        self.bos_text = self._piece(self.bos_id)
        self.eos_text = self._piece(self.llm.token_eos())

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def render(self, user_text: str) -> str:
        """The user turn wrapped in this model's chat template, ready for the assistant's reply."""
        if self._template is None:
            self._template = compile_template(self.spec.chat_template, self.spec.model, self.role)
        return self._template.render(
            messages=[{"role": "user", "content": user_text}],
            add_generation_prompt=True,
            bos_token=self.bos_text,
            eos_token=self.eos_text,
        )

    def tokenize_prompt(self, rendered: str) -> list[int]:
        tokens = self.llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)
        # Templates that write the BOS text themselves would otherwise get it twice.
        if len(tokens) > 1 and tokens[0] == tokens[1] == self.bos_id:
            tokens = tokens[1:]
        return tokens

    def tokenize_answer(self, answer: str) -> list[int]:
        return self.llm.tokenize(answer.encode("utf-8"), add_bos=False, special=False)

    def answer_byte_ends(self, answer: str) -> list[int]:
        """Where each answer token ends, in bytes of the answer: lets other tokenizers line up with these tokens.
        A tokenizer that prefixes a space counts it too, so ends are clamped to the answer's length."""
        n_bytes, total, ends = len(answer.encode("utf-8")), 0, []
        for token in self.tokenize_answer(answer):
            total += len(self.llm.detokenize([token]))
            ends.append(min(total, n_bytes))
        return ends

    def generate(self, rendered: str, *, max_tokens: int, temperature: float, top_p: float, seed: int) -> Generation:
        """Sample a reply to an already rendered prompt; the same seed gives the same reply."""
        prompt = self.tokenize_prompt(rendered)
        budget = min(max_tokens, self.spec.n_ctx - len(prompt))
        if budget <= 0:
            raise TskdError(
                f"{self.role}.n_ctx: a prompt of {len(prompt)} tokens leaves no room to generate "
                f"(n_ctx = {self.spec.n_ctx}); raise {self.role}.n_ctx"
            )
        self.llm.reset()  # no KV prefix reuse: a resumed run must decode exactly as an uninterrupted one
        self.llm.set_seed(seed)
        out: list[int] = []
        finish = "length"
        vocab = self.llm._model.vocab
        # top_k=0 and min_p=0 switch those samplers off, so temperature and top_p are the recipe's whole say.
        for token in self.llm.generate(prompt, top_k=0, top_p=top_p, min_p=0.0, temp=temperature, repeat_penalty=1.0):
            if self._llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            out.append(token)
            if len(out) >= budget:
                break
        text = self.llm.detokenize(out, prev_tokens=prompt).decode("utf-8", errors="ignore")
        return Generation(text=text, n_tokens=len(out), finish_reason=finish)

    def answer_logprobs(self, rendered: str, answer: str) -> np.ndarray:
        """log p(answer token i | prompt, answer tokens < i) for each token of the answer."""
        return self.logprobs_of_ids(self.tokenize_prompt(rendered), self.tokenize_answer(answer))

    def logprobs_of_ids(self, prompt: list[int], target: list[int]) -> np.ndarray:
        """answer_logprobs on token ids, for comparing with another runtime on exactly the same tokens."""
        seq = prompt + target
        if len(seq) > self.spec.n_ctx:
            raise TskdError(
                f"{self.role}.n_ctx: prompt and answer take {len(seq)} tokens, more than n_ctx = {self.spec.n_ctx}"
            )
        llm, ctx, batch = self.llm, self.llm._ctx, self.llm._batch.batch
        llm.reset()
        ctx.kv_cache_seq_rm(-1, 0, -1)
        first = len(prompt) - 1  # the logits at position j predict token j + 1
        out = np.empty(len(target), dtype=np.float64)
        for start in range(0, len(seq), llm.n_batch):
            chunk = seq[start : start + llm.n_batch]
            wanted = []
            for i, token in enumerate(chunk):
                pos = start + i
                batch.token[i], batch.pos[i] = token, pos
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
                batch.logits[i] = first <= pos < len(seq) - 1
                if batch.logits[i]:
                    wanted.append((i, pos))
            batch.n_tokens = len(chunk)
            if not wanted:
                batch.logits[len(chunk) - 1] = True  # llama.cpp wants at least one output per batch
            ctx.decode(llm._batch)
            for i, pos in wanted:
                row = np.ctypeslib.as_array(
                    ctypes.cast(ctx.get_logits_ith(i), ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
                ).astype(np.float64)
                top = row.max()
                lse = top + np.log(np.exp(row - top).sum())
                out[pos - first] = row[seq[pos + 1]] - lse
        llm.reset()
        return out

    def close(self) -> None:
        self.llm.close()
