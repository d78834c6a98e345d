"""A served backend: a model behind an OpenAI-compatible completions server (llama-cpp-python's
`python -m llama_cpp.server` is tested in the suite, vLLM's by `just test-vllm`; SGLang's speaks the same API),
standard library HTTP only.

Recipe keys: `backend = "openai"`, `url` (the server's root; only that host is ever contacted), `served_model` (the
model's name on the server, checked against /v1/models first, since llama-cpp-python's server silently answers an
unknown name with its default model), `timeout` (seconds per request), and optionally `model`: a local copy of the
served GGUF. `model` stays a path (never a name) so that it means one thing in every backend: here it is read for
its chat template, its BOS/EOS texts and its tokenizer identity only (two roles with the same local vocabulary
compare gaps per token, as in-process), never loaded. Without it the spec must give `chat_template`, and gaps
between two served models are compared per byte. `lora` is refused: the server serves its own adapters by name.

The chat template is rendered here, as in-process (the same jinja2 sandbox and budgets), and the server receives
plain text: the simplest design that works with every completions server, and the one that makes a served run's
prompts byte-identical to an in-process run's. Token counts come from the server's tokenize endpoint
(llama-cpp-python's /extras/tokenize, else vLLM/SGLang's /tokenize).

Scoring is lm-evaluation-harness's contract: POST /v1/completions with the rendered prompt and the answer as one
text, `echo: true, logprobs: 1, max_tokens: 1, temperature: 0` (max_tokens 0 would mean "until the context ends" to
llama-cpp-python). The answer's tokens are the echoed entries at and after the answer's first character. Offsets
are not taken on trust: llama-cpp-python counts them in the text with special tokens left out (its detokenizer
drops control tokens), so the answer's start is found from the end of the echo instead (the answer is plain text
at the end of what was sent), and each response is checked: the echo is what was sent, an entry starts exactly
where the answer starts, the answer's tokens spell the answer (ASCII answers), every log-prob is a finite number,
and the generated token is where it should be. A mismatch is one line naming url and model, never a silent score.

vLLM decodes each echoed token alone: a token holding part of a character prints as U+FFFD, so its offsets count
that character twice or more. Where an entry holds U+FFFD, the answer is placed by the token texts instead (the
splits of the answer's bytes that decode to them, followed back from the end), whatever the server. It also leaves
a generated special token (the end of turn) out of the reply's text while its entry names it; that is accepted
where the usage accounts for every entry.

llama-cpp-python's server shifts echoed log-probs by one token when a prompt does not start with the BOS token (its
issue #1983): each prompt token's value is then read from the distribution after that token, at that token's id, a
number no reordering of the response can repair. The first scoring call therefore compares the echoed log-prob of
one greedy token with the log-prob the same server reported when it generated it; a server that disagrees is
refused with one line (ChatML models whose BOS is <|im_start|>, and models that add a BOS, are unaffected).

Replies: llama-cpp-python's server goes on past max_tokens while its last bytes look like an unfinished character;
such a reply is asked for again with token offsets and cut where the in-process backend stops, except when it holds
a BOS-id token (left out of the offsets), which is kept whole (a few characters more). Sampling is sent plain
(no top-k, min-p or repeat penalty), with the item's seed: llama-cpp-python then samples as in-process does.

Requests go `parallel` at a time from a thread pool (llama-cpp-python's server runs one at a time behind a global
lock; others batch them). Connection failures and 5xx answers are retried with backoff (a server restarting, a
momentary overload); what remains is one line naming url and model: server down, unknown model, no prompt
log-probs, a response that does not match what was sent, a server that stopped answering mid-run. Each item is its
own request, so a result depends only on its item; a server's prefix cache may still change the last digits.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tskd_lite import gguf_meta
from tskd_lite.backends.base import BACKENDS, ChatTurns, Generation, Scored
from tskd_lite.errors import TskdError

if TYPE_CHECKING:
    from tskd_lite.recipe import ModelSpec

RETRIES = 4  # tries after the first, for transient failures
BACKOFF = 0.5  # seconds before the first retry, doubled each time (0.5 + 1 + 2 + 4 s in all)
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
# Plain sampling: llama-cpp-python's server defaults to top_k 40, min_p 0.05 and repeat_penalty 1.1, which the
# in-process backend does not apply; the same settings give the same greedy replies. Other servers ignore the keys
# they lack.
PLAIN_SAMPLING = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}
PER_REQUEST_FIELDS = frozenset({"created", "permission"})  # of a /v1/models entry; see identities
ALIGNMENT_TOLERANCE = 1e-3  # nats: the same server's two computations of one log-prob agree far closer than this


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


def _one_line(text: Any, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _Client:
    """JSON over HTTP to one server for one model: retries, timeouts and one-line errors naming url and model."""

    def __init__(self, url: str, model: str, timeout: float, role: str) -> None:
        self.root, self.model, self.timeout, self.role = _root(url), model, timeout, role
        self.answered = False  # once a request succeeded, a server that stops answering died mid-run

    def fail(self, what: str) -> TskdError:
        return TskdError(f"{self.role}: {self.root} (model {self.model!r}): {what}")

    def request(self, path: str, body: dict | None = None, *, missing_ok: bool = False) -> Any:
        """The decoded JSON answer of GET (no body) or POST; None for a 404 when missing_ok."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        reason = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(BACKOFF * 2 ** (attempt - 1))
            req = urllib.request.Request(self.root + path, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                message = _error_message(e)
                if e.code == 404 and missing_ok:
                    return None
                if e.code not in TRANSIENT_STATUS:
                    raise self.fail(f"{path} answered HTTP {e.code}: {message}") from None
                reason = f"HTTP {e.code}: {message}"
            except TimeoutError:
                # not retried: the server may still be working on it, and another copy would queue behind it
                raise self.fail(f"{path} gave no answer within {self.timeout:g} s (raise timeout?)") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as e:
                reason = _one_line(getattr(e, "reason", e) or type(e).__name__)
            else:
                try:
                    answer = json.loads(raw)
                except ValueError:
                    raise self.fail(f"{path} answered with something other than JSON") from None
                self.answered = True
                return answer
        tries = f"{RETRIES + 1} tries"
        if self.answered:
            raise self.fail(f"the server stopped answering mid-run ({reason}; {tries}); restart it and run again")
        raise self.fail(f"the server is not answering ({reason}; {tries}); start it or fix the url")

    def models(self) -> list[dict]:
        answer = self.request("/v1/models")
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
            raise self.fail("/v1/models answered without a list of models")
        return data

    def entry(self) -> dict:
        """What /v1/models reports for this model; one line listing what it serves where it is not there."""
        data = self.models()
        for entry in data:
            if entry["id"] == self.model:
                return entry
        served = ", ".join(repr(m["id"]) for m in data) or "nothing"
        raise self.fail(f"the server has no model of that name (it serves {served}); fix served_model")


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read() or b"{}")
    except (ValueError, OSError):
        return _one_line(e.reason)
    error = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message", error)
    return _one_line(error)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sent_entries(tokens: list, n_generated: int, generated: str, n_prompt: int) -> int:
    """How many echoed entries belong to the text sent: all but the generated tokens', which come last (more than
    max_tokens of them where llama-cpp-python finishes a character first). Where every token has its entry, the
    usage says so. Otherwise some generated tokens may have no entry (llama-cpp-python leaves out every token whose
    id is the BOS id, and some models generate it, alone or among others): the fewest left out whose remaining
    entries spell the generated text. The usage alone cannot tell a left-out token from a generated part of a
    character, which vLLM's entry shows as U+FFFD while its text is empty."""
    if len(tokens) == n_prompt + n_generated:
        return n_prompt
    for left_out in range(n_generated + 1):
        n = len(tokens) - n_generated + left_out
        if n >= 0 and "".join(tokens[n:]) == generated:
            return n
    return len(tokens) - n_generated


def _byte_ends(char_ends: list[int]) -> list[int]:
    """Byte ends from the ends of the characters each token completes. A token that holds part of a character
    prints as nothing (no end of its own): it is given one byte of that character, as byte-level tokens hold."""
    out: list[int] = []
    for i, end in enumerate(char_ends):
        prev = out[-1] if out else 0
        if end == prev:
            later = next((e for e in char_ends[i + 1 :] if e > prev), prev)
            end = min(prev + 1, later)
        out.append(end)
    return out


def _begins(data: bytes, text: str, end: int, floor: int) -> list[int]:
    """Where a token printed as `text` can begin if it ends at byte `end` (never before `floor`): its bytes decode
    to that text, broken pieces replaced by U+FFFD as tokenizers decode them."""
    low = max(floor, end - 4 * len(text))  # a character, or a broken piece replaced, is at most 4 bytes
    return [b for b in range(end, low - 1, -1) if data[b:end].decode("utf-8", errors="replace") == text]


def _spell_back(sent: str, tokens: list, n: int, answer: str) -> tuple[int, list[int]] | None:
    """(the answer's first entry, each answer entry's byte end in the answer) from the token texts alone, spelled
    back from the end of the text sent; None where they do not spell it or no entry starts where it starts.

    For servers that decode each token alone (vLLM): a token holding part of a character prints as U+FFFD for each
    broken piece, so the offsets count such a character twice or more and cannot place the answer. A token's bytes
    are then known only by what they decode to: every split of the answer's bytes whose pieces decode to the token
    texts is followed back from the end of the text. Where two splits fit, the one with more token ends between
    characters is taken (tokenizers merge the bytes of one character first): the byte ends may then be a byte off
    inside a character, never outside it."""
    if not answer:
        return n, []
    data = sent.encode("utf-8")
    start = len(data) - len(answer.encode("utf-8"))
    # where the next token back may end: (token ends between characters, the byte ends after it)
    frontier: dict[int, tuple[int, list[int]]] = {len(data): (0, [])}
    found: dict[int, list[int]] = {}  # a first entry the answer can start at: its byte ends
    i = n
    while frontier and i > 0:
        i -= 1
        after: dict[int, tuple[int, list[int]]] = {}
        for end, (whole, ends) in frontier.items():
            whole += end == len(data) or data[end] & 0xC0 != 0x80
            for begin in _begins(data, tokens[i], end, start):
                if begin not in after or after[begin][0] < whole:
                    after[begin] = (whole, [end - start, *ends])
        if start in after:
            found[i] = after.pop(start)[1]
        frontier = after
    if len(found) <= 1:
        return next(iter(found.items()), None)
    # More than one split fits (the first three bytes of a 4-byte character print as one U+FFFD, and so do its first
    # two): the right one is the one after which the prompt's tokens spell the prompt back furthest.
    reach = {first: _reach(data, tokens, first, start) for first in found}
    best = [first for first, r in reach.items() if r == max(reach.values())]
    return (best[0], found[best[0]]) if len(best) == 1 else None


def _reach(data: bytes, tokens: list, i: int, end: int) -> int:
    """How many of the tokens before entry i spell the text back from byte `end`; more than all of them where they
    reach the text's start (tokens left before it are the server's own, a BOS)."""
    frontier, reached = {end}, 0
    while i > 0 and frontier and 0 not in frontier:
        i -= 1
        frontier = {b for e in frontier for b in _begins(data, tokens[i], e, 0)}
        reached += bool(frontier)
    return len(tokens) + 1 if 0 in frontier else reached


def _special_texts(path: Path) -> tuple[str, str]:
    """The BOS and EOS token texts of a local GGUF, as the in-process backend hands them to the template."""
    from gguf import GGUFReader  # deferred: only a spec with a local GGUF needs it

    reader = GGUFReader(str(path))
    tokens = reader.fields.get("tokenizer.ggml.tokens")

    def text(key: str) -> str:
        field = reader.fields.get(key)
        if tokens is None or field is None:
            return ""
        i = int(field.parts[field.data[0]][0])
        return bytes(tokens.parts[tokens.data[i]]).decode("utf-8", errors="replace") if i < len(tokens.data) else ""

    return text("tokenizer.ggml.bos_token_id"), text("tokenizer.ggml.eos_token_id")


@BACKENDS.register("openai")
class OpenAIServer(ChatTurns):
    """A Backend (backends/base.py) over HTTP: the model is served elsewhere, this process renders and checks."""

    runtime = "server"
    name = "openai"  # the recipe's backend key, as messages name it

    @classmethod
    def check(cls, spec: ModelSpec, where: str) -> None:
        if not spec.url:
            raise TskdError(f'{where}.url: required for backend = "{cls.name}" (the server\'s root, http://host:port)')
        parsed = urllib.parse.urlsplit(spec.url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment:
            raise TskdError(f"{where}.url: expected http://host:port or https://host[:port][/path], got {spec.url!r}")
        if not spec.served_model:
            raise TskdError(
                f'{where}.served_model: required for backend = "{cls.name}" (the model\'s name on the server)'
            )
        if spec.lora is not None:
            raise TskdError(f"{where}.lora: a served model takes no lora (serve the adapter, name it in served_model)")
        if spec.dtype != "auto":
            raise TskdError(f"{where}.dtype: a served model takes no dtype (the server chooses its weights' types)")
        if spec.requantize is not None:
            raise TskdError(f"{where}.requantize: a served model takes no requantize (the server loads its weights)")
        if spec.model is not None:
            gguf_meta.check_gguf(spec.model, f"{where}.model")
        elif not spec.chat_template:
            raise TskdError(f"{where}.chat_template: required for a served model without a local GGUF in model")

    @classmethod
    def identities(cls, spec: ModelSpec, role: str) -> dict[str, str]:
        client = _Client(spec.url, spec.served_model, spec.timeout, role)
        # Fields some servers make anew for each request are not part of what the model is: vLLM's "created" is the
        # time of the request and its "permission" a fresh id and time (kept, a resume would always be refused)
        reported = {k: v for k, v in client.entry().items() if k not in PER_REQUEST_FIELDS}
        served = {"url": client.root, "model": spec.served_model, "reported": reported}
        out = {f"{role}.served_model": json.dumps(served, sort_keys=True)}
        if spec.model is not None:
            out[f"{role}.model"] = gguf_meta.identity(spec.model)
        return out

    @classmethod
    def tokenizer_identity(cls, spec: ModelSpec) -> str:
        if spec.model is not None:  # the served GGUF's own vocabulary, as the in-process backend names it
            return "llama_cpp:" + gguf_meta.vocab_fingerprint(spec.model)
        return f"openai:{_root(spec.url)}|{spec.served_model}"

    def __init__(self, spec: ModelSpec, *, role: str, threads: int = 0, parallel: int = 8) -> None:
        self.role, self.spec, self.parallel = role, spec, parallel
        self.client = _Client(spec.url, spec.served_model, spec.timeout, role)
        self.client.entry()  # an unknown name is refused before any request could fall back to another model
        self._template = None
        self.bos_text, self.eos_text = _special_texts(spec.model) if spec.model is not None else ("", "")
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix=f"tskd-{role}")
        self._tokenize_path: str | None = None
        self._aligned = False
        self._lock = threading.Lock()

    # text and tokens ----------------------------------------------------------------------------------------

    def _tokens(self, text: str) -> list:
        """The server's tokens of `text` as a prompt (with the BOS it adds, if any)."""
        paths = [self._tokenize_path] if self._tokenize_path else ["/extras/tokenize", "/tokenize"]
        for path in paths:
            body = {"model": self.spec.served_model, "input": text, "prompt": text}
            answer = self.client.request(path, body, missing_ok=True)
            if answer is None:
                continue
            tokens = answer.get("tokens") if isinstance(answer, dict) else None
            if not isinstance(tokens, list):
                raise self.client.fail(f"{path} answered without a list of tokens")
            self._tokenize_path = path
            return tokens
        raise self.client.fail("the server has no tokenize endpoint (/extras/tokenize or /tokenize)")

    def count_prompt_tokens(self, rendered: str) -> int:
        return len(self._tokens(rendered))

    def count_answer_tokens(self, text: str) -> int:
        # the endpoint tokenizes as a prompt: whatever it puts before an empty text (a BOS) is not the answer's
        return max(0, len(self._tokens(text)) - len(self._tokens("")))

    # requests ----------------------------------------------------------------------------------------------

    def _map(self, fn: Callable, items: Sequence) -> list:
        futures = [self._pool.submit(fn, *item) for item in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:  # no more requests to a server that failed; the running ones end by themselves
                f.cancel()
            raise

    def _complete(self, body: dict) -> tuple[dict, dict]:
        """POST /v1/completions for this model; the first choice and the usage, both checked to be there."""
        answer = self.client.request("/v1/completions", {"model": self.spec.served_model, **body})
        choices = answer.get("choices") if isinstance(answer, dict) else None
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
            raise self.client.fail("/v1/completions answered without exactly one choice")
        if not isinstance(usage, dict) or not all(
            isinstance(usage.get(k), int) and usage[k] >= 0 for k in ("prompt_tokens", "completion_tokens")
        ):
            raise self.client.fail("/v1/completions answered without token counts (usage)")
        if not isinstance(choices[0].get("text"), str):
            raise self.client.fail("/v1/completions answered without a text")
        return choices[0], usage

    # generation --------------------------------------------------------------------------------------------

    def generate(
        self, rendered: Sequence[str], *, max_tokens: int, temperature: float, top_p: float, seeds: Sequence[int]
    ) -> list[Generation]:
        """A reply to each rendered prompt, `parallel` requests in flight; each carries its own seed."""
        items = [(r, max_tokens, temperature, top_p, seed) for r, seed in zip(rendered, seeds, strict=True)]
        return self._map(self._generate_one, items)

    def _generate_one(self, rendered: str, max_tokens: int, temperature: float, top_p: float, seed: int) -> Generation:
        body = {"prompt": rendered, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        body |= {"seed": seed, **PLAIN_SAMPLING}
        choice, usage = self._complete(body)
        n, text = usage["completion_tokens"], choice["text"]
        finish = choice.get("finish_reason")
        if finish not in ("stop", "length", "eos"):
            raise self.client.fail(f"a reply came back with finish_reason {finish!r} (expected stop or length)")
        if n > max_tokens:  # llama-cpp-python goes on while its last bytes look like an unfinished character
            text, n = self._cut(body, rendered, text, n, max_tokens), max_tokens
        return Generation(text=text, n_tokens=n, finish_reason="length" if finish == "length" else "stop")

    def _cut(self, body: dict, rendered: str, text: str, n: int, max_tokens: int) -> str:
        """The reply as its first max_tokens tokens spell it (the in-process backend's cut): the same seeded request
        again, with each token's offset, cut at token max_tokens."""
        choice, usage = self._complete(body | {"logprobs": 1})
        lp = choice.get("logprobs")
        offsets = lp.get("text_offset") if isinstance(lp, dict) else None
        if choice["text"] != text or usage["completion_tokens"] != n:
            raise self.client.fail("the same seeded request gave another reply (is the server deterministic?)")
        if not isinstance(offsets, list) or len(offsets) != n or not all(isinstance(o, int) for o in offsets):
            # a token without an entry (llama-cpp-python leaves out BOS ids): the reply is kept whole
            return text
        cut = offsets[max_tokens] - len(rendered)
        if not 0 <= cut <= len(text):
            raise self.client.fail("a reply's token offsets lie outside its text")
        return text[:cut]

    # scoring -----------------------------------------------------------------------------------------------

    def score_answers(self, pairs: Sequence[tuple[str, str]], *, byte_ends: bool = False) -> list[Scored]:
        if pairs:
            with self._lock:
                if not self._aligned:
                    self._check_alignment(pairs[0][0])
                    self._aligned = True
        return self._map(self._score_one, [(rendered, answer, byte_ends) for rendered, answer in pairs])

    def _echo(self, text: str) -> tuple[list, list, list, dict, str]:
        """The echoed entries (log-probs, offsets, token texts) of `text`, the usage, and the generated text."""
        body = {"prompt": text, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0.0, **PLAIN_SAMPLING}
        choice, usage = self._complete(body)
        lp = choice.get("logprobs")
        keys = ("token_logprobs", "text_offset", "tokens")
        if not isinstance(lp, dict) or not all(isinstance(lp.get(k), list) and lp[k] for k in keys):
            raise self.client.fail("the response has no prompt log-probs (does the server support echo + logprobs?)")
        values, offsets, tokens = (lp[k] for k in keys)
        if not len(values) == len(offsets) == len(tokens):
            raise self.client.fail("the response's log-probs, offsets and tokens differ in number")
        if not all(isinstance(t, str) for t in tokens):
            raise self.client.fail("the response's tokens are not all texts")
        if not choice["text"].startswith(text):
            raise self.client.fail("the response does not echo the text sent")
        return values, offsets, tokens, usage, choice["text"][len(text) :]

    def _score_one(self, rendered: str, answer: str, byte_ends: bool) -> Scored:
        values, offsets, tokens, usage, generated = self._echo(rendered + answer)
        mismatch = self._mismatch
        n = _sent_entries(tokens, usage["completion_tokens"], generated, usage["prompt_tokens"])
        if n < 1:
            raise mismatch("it has no entry for the text sent")
        # A generated special token (an end of turn) is left out of the reply's text by servers that skip special
        # tokens (vLLM) while its entry names it: accepted where the usage accounts for every entry.
        every = len(tokens) == usage["prompt_tokens"] + usage["completion_tokens"]
        skipped = every and generated == "" and usage["completion_tokens"] == 1
        if n < len(tokens) and generated.isascii() and "".join(tokens[n:]) != generated and not skipped:
            raise mismatch(f"its last tokens {''.join(tokens[n:])!r} are not the generated {generated!r}")
        if any("\ufffd" in t for t in tokens[:n]):
            # A token printed as part of a character (vLLM decodes each token alone): the offsets count that
            # character more than once, the token texts place the answer instead.
            spelled = _spell_back(rendered + answer, tokens, n, answer)
            if spelled is None:
                raise mismatch("its token texts do not spell the answer, or no token starts where it starts")
            first, ends = spelled
        else:
            first, ends = self._place_by_offsets(offsets, tokens, n, answer)
        picked = values[first:n]
        if not all(_number(v) for v in picked):
            raise mismatch("an answer token has no log-prob")
        if answer.isascii() and "".join(tokens[first:n]) != answer:
            raise mismatch("its answer tokens do not spell the answer sent")
        return Scored(np.array(picked, dtype=np.float64), ends if byte_ends else [], usage["prompt_tokens"])

    def _place_by_offsets(self, offsets: list, tokens: list, n: int, answer: str) -> tuple[int, list[int]]:
        """(the answer's first entry, each answer entry's byte end in the answer) from the server's text offsets."""
        if not all(isinstance(o, int) for o in offsets) or any(
            a > b for a, b in zip(offsets, offsets[1:], strict=False)
        ):
            raise self._mismatch("its text offsets are not in order")
        # The answer is plain text at the end of what was sent: its start counted back from the end of the echo,
        # in the server's own offsets (which may leave special tokens out).
        end = offsets[n] if n < len(tokens) else offsets[n - 1] + len(tokens[n - 1])
        start = end - len(answer)
        first = next((i for i in range(n) if offsets[i] >= start), n)
        if answer and (first == n or offsets[first] != start):
            raise self._mismatch("no token starts where the answer starts")
        stops = [*offsets[first + 1 : n], end]
        return first, _byte_ends([len(answer[: stop - start].encode("utf-8")) for stop in stops])

    def _mismatch(self, why: str) -> TskdError:
        return self.client.fail(f"a scoring response does not match the text sent ({why})")

    def _check_alignment(self, rendered: str) -> None:
        """Refuse a server whose echoed log-probs are shifted (llama-cpp-python #1983): the echoed log-prob of a
        greedy token must be the one the server gave when it generated that token after the same text."""
        for cut in range(8):  # a prompt after which the model writes no single plain token: a few characters less
            prompt = rendered[: len(rendered) - cut]
            body = {"prompt": prompt, "logprobs": 1, "max_tokens": 1, "temperature": 0.0, **PLAIN_SAMPLING}
            choice, usage = self._complete(body)
            lp = choice.get("logprobs")
            generated = lp.get("token_logprobs") if isinstance(lp, dict) else None
            if usage["completion_tokens"] != 1 or not choice["text"] or not generated or not _number(generated[0]):
                continue
            token, expected = choice["text"], float(generated[0])
            values, _, tokens, usage, after = self._echo(prompt + token)
            if usage["completion_tokens"] != 1:
                continue
            at = _sent_entries(tokens, 1, after, usage["prompt_tokens"]) - 1
            if tokens[at] == token and _number(values[at]) and abs(values[at] - expected) <= ALIGNMENT_TOLERANCE:
                return
            # shifted, the entries end at the probe token (the generated one's is left out) with another value
            got = values[-1] if tokens[-1] == token else values[at]
            raise self.client.fail(
                f"the server's echoed prompt log-probs are shifted by one token (log p of {token!r}: {got:.4f} "
                f"echoed, {expected:.4f} generated; llama-cpp-python issue #1983, prompts that do not start with the "
                "model's BOS token); use a chat template that starts with it, or another server"
            )

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
