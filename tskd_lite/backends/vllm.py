"""A model served by vLLM, scored in token ids: `backend = "vllm"`, the same keys as `backend = "openai"` (url,
served_model, timeout, optionally a local `model` for the chat template and the tokenizer identity).

Generation is the openai backend's (backends/openai.py). Scoring and token counts use what vLLM offers beyond the
OpenAI API, which removes most guesses the text path has to make: prompt and answer are tokenized apart by the
server's /tokenize (special tokens added only to the prompt, as the in-process backends tokenize them), the ids are
sent as the prompt, and `prompt_logprobs` gives each sent token's log-prob, read at that token's id. No offsets,
no BOS shift: the answer's tokens are the ids sent after the prompt's. Byte ends (the gaps per byte and the
token_gap rule) come from the entries' token texts, spelled back over the answer's bytes as the openai backend does
for split characters. Up to `parallel` prompts go in one request (vLLM schedules them together), and up to
`parallel` requests are in flight. Every response is checked: one choice per prompt, the ids the server used are
the ids sent (`return_token_ids`), an entry for every sent token holding that token's id, every log-prob a number.
An answer that holds a special token's text (`<|im_end|>`) is read as that token by vLLM's tokenizer, where the
in-process backends read it as plain text: the one place the two can differ.

A served LoRA is its own model name (`--lora-modules teacher=...`), as in the openai backend. vLLM's CPU build
crashes its engine on concurrent prompt log-prob requests while LoRA is enabled (docs/scale.md): serve the merged
teacher there, or set `parallel = 1` (one prompt per request, one request at a time).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tskd_lite.backends.base import BACKENDS, Scored
from tskd_lite.backends.openai import PLAIN_SAMPLING, OpenAIServer, _byte_ends, _number, _spell_back


@BACKENDS.register("vllm")
class VLLMServer(OpenAIServer):
    """The openai backend, scoring sent token ids with vLLM's prompt_logprobs."""

    name = "vllm"

    def _ids(self, text: str, special: bool) -> list[int]:
        """The server's token ids of `text`: with its special tokens added (a prompt) or not (an answer)."""
        body = {"model": self.spec.served_model, "prompt": text, "add_special_tokens": special}
        answer = self.client.request("/tokenize", body, missing_ok=True)
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise self.client.fail("/tokenize gave no list of token ids (is this a vLLM server? else backend = openai)")
        return tokens

    def count_prompt_tokens(self, rendered: str) -> int:
        return len(self._ids(rendered, True))

    def count_answer_tokens(self, text: str) -> int:
        return len(self._ids(text, False))

    def score_answers(self, pairs: Sequence[tuple[str, str]], *, byte_ends: bool = False) -> list[Scored]:
        items = self._map(lambda r, a: (self._ids(r, True), self._ids(a, False), a), pairs)
        groups = [(items[i : i + self.parallel], byte_ends) for i in range(0, len(items), self.parallel)]
        return [scored for group in self._map(self._score_group, groups) for scored in group]

    def _score_group(self, group: list[tuple[list[int], list[int], str]], byte_ends: bool) -> list[Scored]:
        sent = [prompt + answer for prompt, answer, _ in group]
        body = {"prompt": sent, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "return_token_ids": True}
        answer = self.client.request("/v1/completions", {"model": self.spec.served_model, **body, **PLAIN_SAMPLING})
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise self._mismatch("it has no list of choices")
        indexes = [c.get("index") for c in choices]
        if not all(isinstance(i, int) for i in indexes) or sorted(indexes) != list(range(len(sent))):
            raise self._mismatch(f"expected choices indexed 0 to {len(sent) - 1}, one per prompt sent")
        by_index = {c["index"]: c for c in choices}
        return [
            self._read(by_index[i], tokens, len(prompt), text if byte_ends else None)
            for i, (tokens, (prompt, _, text)) in enumerate(zip(sent, group, strict=True))
        ]

    def _read(self, choice: dict, tokens: list[int], n_prompt: int, answer: str | None) -> Scored:
        """The answer tokens' log-probs from one choice, checked against the ids sent; byte ends where `answer`."""
        if choice.get("prompt_token_ids") != tokens:
            raise self._mismatch("the server's prompt token ids are not the ids sent")
        entries = choice.get("prompt_logprobs")
        if not isinstance(entries, list) or len(entries) != len(tokens):
            raise self._mismatch("it has no prompt log-prob entry for every token sent (prompt_logprobs)")
        if n_prompt == 0 and len(tokens) > n_prompt:
            raise self._mismatch("the prompt has no token, so the answer's first token has no log-prob")
        values, texts = [], []
        for token, entry in zip(tokens[n_prompt:], entries[n_prompt:], strict=True):
            got = entry.get(str(token)) if isinstance(entry, dict) else None
            value = got.get("logprob") if isinstance(got, dict) else None
            if not _number(value):
                raise self._mismatch(f"an answer token (id {token}) has no log-prob at its own id")
            values.append(float(value))
            texts.append(got.get("decoded_token"))
        ends: list[int] = []
        if answer is not None:
            spelled = _spell_back(answer, texts, len(texts), answer) if all(isinstance(t, str) for t in texts) else None
            if spelled is None or spelled[0] != 0:
                raise self._mismatch("its answer tokens' texts do not spell the answer sent")
            # a token holding part of a character has an empty text here (vLLM decodes it alone): it is given one
            # byte of that character, as the text path gives it
            ends = _byte_ends(spelled[1])
        return Scored(np.array(values, dtype=np.float64), ends, len(tokens))
