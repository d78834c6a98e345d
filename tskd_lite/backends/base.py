"""The model seam: what the pipeline, evaluation and the benchmark ask of a model, in text, and the one factory.

A backend is one class registered under the name a recipe's `backend` key uses (default "llama_cpp"). Callers see
text in and text or log-probs out; token ids stay inside the backend. A backend may offer more (llama_cpp's token-
level scoring, which the GGUF adapter check and the tests use to compare runtimes on identical ids); callers that
need such an ability name the backend class they need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from tskd_lite.chat import compile_template, render_user_turn, user_prefix
from tskd_lite.errors import TskdError
from tskd_lite.registry import Registry

if TYPE_CHECKING:
    from jinja2 import Template

    from tskd_lite.recipe import ModelSpec


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    finish_reason: str  # "stop": the model ended its turn; "length": the token budget ran out


@dataclass(frozen=True)
class Scored:
    """An answer scored after its prompt: log p of each answer token, where each token ends in the answer's bytes
    (empty unless asked for), and how many tokens prompt and answer took."""

    logprobs: np.ndarray
    byte_ends: list[int]
    n_tokens: int


class Backend(Protocol):
    role: str
    spec: ModelSpec
    parallel: int  # how many sequences a call works on at once (the size of a group a caller commits whole)
    runtime: str  # what evaluation rows call it ("llama.cpp")

    def render(self, user_text: str) -> str:
        """The user turn in this model's chat template, ready for the reply."""

    def user_prefix(self) -> str:
        """The chat template up to where the user's words begin (what the model continues to write a user turn)."""

    def count_prompt_tokens(self, rendered: str) -> int: ...

    def count_answer_tokens(self, text: str) -> int: ...

    def generate(
        self, rendered: Sequence[str], *, max_tokens: int, temperature: float, top_p: float, seeds: Sequence[int]
    ) -> list[Generation]:
        """A reply to each rendered prompt; a prompt's seed fixes its reply, whatever else is in the call."""

    def score_answers(self, pairs: Sequence[tuple[str, str]], *, byte_ends: bool = False) -> list[Scored]:
        """log p of each answer's tokens after its rendered prompt, for (rendered prompt, answer) pairs."""

    def close(self) -> None: ...

    # Class-level: what a recipe can be checked and a run identified by without loading the model.
    @classmethod
    def check(cls, spec: ModelSpec, where: str) -> None:
        """Raise TskdError (one line naming `where` + the key) where the spec cannot be served."""

    @classmethod
    def identities(cls, spec: ModelSpec, role: str) -> dict[str, str]:
        """{recipe key: identity} of what the model is made of (a resume refuses a model changed in place)."""

    @classmethod
    def tokenizer_identity(cls, spec: ModelSpec) -> str:
        """Equal for two specs exactly when their tokenizers split text alike (gaps per token, else per byte)."""


BACKENDS: Registry[type] = Registry("backend")


def check_in_process(spec: ModelSpec, where: str) -> None:
    """What every in-process backend asks of its spec: a model, and none of a served model's keys."""
    if spec.model is None:
        raise TskdError(f"{where}.model: required key is missing")
    for key in ("url", "served_model"):  # a served model's keys: the recipe most likely lacks backend = "openai"
        if getattr(spec, key) is not None:
            raise TskdError(f'{where}.{key}: only served backends take it (set backend = "openai" or "vllm")')


def in_groups(pairs: Sequence[tuple[list[int], list[int]]], parallel: int, fits) -> Iterator[list]:
    """(prompt ids, answer ids) pairs in their order, in groups of at most `parallel` that `fits(group)` accepts
    (the backend's logit budget); a pair alone always makes a group."""
    group: list = []
    for pair in pairs:
        if group and (len(group) == parallel or not fits([*group, pair])):
            yield group
            group = []
        group.append(pair)
    if group:
        yield group


class ChatTurns:
    """What every backend that renders the chat template itself shares: the user turn, its prefix and the token
    counts. A backend sets spec, role, bos_text and eos_text, and defines tokenize_prompt and tokenize_answer
    where it counts tokens that way (one that counts otherwise defines the count methods itself)."""

    spec: ModelSpec
    role: str
    bos_text: str
    eos_text: str
    _template: Template | None = None

    def render(self, user_text: str) -> str:
        """The user turn wrapped in this model's chat template, ready for the assistant's reply."""
        if self._template is None:
            self._template = compile_template(self.spec.chat_template, self.spec.model, self.role)
        return render_user_turn(self._template, self.role, user_text, self.bos_text, self.eos_text)

    def user_prefix(self) -> str:
        return user_prefix(self.render, self.role)

    def count_prompt_tokens(self, rendered: str) -> int:
        return len(self.tokenize_prompt(rendered))

    def count_answer_tokens(self, text: str) -> int:
        return len(self.tokenize_answer(text))


class InGroups:
    """generate for the in-process backends: every prompt tokenized and checked to fit first (a prompt too long is
    one line before any work), then replies `parallel` at a time. A backend defines tokenize_prompt, _check_fits
    and _generate_group (one group's replies, each by its own seed)."""

    parallel: int

    def generate(
        self, rendered: Sequence[str], *, max_tokens: int, temperature: float, top_p: float, seeds: Sequence[int]
    ) -> list[Generation]:
        """A reply to each rendered prompt, `parallel` at a time; a prompt's seed fixes its reply."""
        prompts = [self.tokenize_prompt(r) for r in rendered]
        for prompt in prompts:
            self._check_fits(len(prompt) + 1, "a prompt")
        out: list[Generation] = []
        for start in range(0, len(prompts), self.parallel):
            group = prompts[start : start + self.parallel]
            out += self._generate_group(group, max_tokens, temperature, top_p, seeds[start : start + self.parallel])
        return out


def open_backend(spec: ModelSpec, *, role: str, threads: int = 0, parallel: int = 8) -> Backend:
    """The model of a recipe's role, served by the backend its spec names."""
    return BACKENDS[spec.backend](spec, role=role, threads=threads, parallel=parallel)


def backend_class(spec: ModelSpec) -> type:
    return BACKENDS[spec.backend]
