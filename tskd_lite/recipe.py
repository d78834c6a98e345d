"""The recipe: one TOML file with everything a run needs, validated once here at the edge.

Each table maps onto a frozen dataclass. Validation is driven by the dataclasses themselves: type hints give the
expected types, field metadata gives the allowed range, so adding a key means adding one field.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tskd_lite.backends import BACKENDS
from tskd_lite.chat import check_template, template_source
from tskd_lite.errors import TskdError
from tskd_lite.gguf_meta import check_gguf
from tskd_lite.hf import check_hf_folder
from tskd_lite.jsonl import check_input_file, read_eval_file, read_jsonl, read_lines
from tskd_lite.quantize import TYPES as REQUANTIZE_TYPES
from tskd_lite.registry import Registry
from tskd_lite.select import RULES
from tskd_lite.strategies import MAX_CANDIDATES, STRATEGIES

# Few-shot and continued as raw text by default (paraphrase_template = "raw"): a 135M instruct model asked in its
# chat template answers the question instead of rewriting it; continuing a list of rewrites, it rewrites.
DEFAULT_PARAPHRASE = (
    "Rewrite a question in other words, keeping every name and number in it.\n\n"
    "Question: How old is Tom Hardy?\nRewritten: What is the age of Tom Hardy?\n\n"
    "Question: Which river runs through Vienna?\nRewritten: Through Vienna, which river flows?\n\n"
    "Question: Who wrote Dune?\nRewritten: Who is the author of Dune?\n\n"
    "Question: {prompt}\nRewritten:"
)
DEFAULT_INSTRUCTION = (
    "Here are example questions from one dataset:\n\n{examples}\n\n"
    "Write one new question of the same kind and topic, different from every example. "
    "Reply with the question only."
)


# Upper bounds of the count and size keys: far above any real use, low enough that nothing tries to allocate them.
MAX_TOKENS = 131_072  # a context, a sequence or a reply, in tokens
MAX_COUNT = 10_000_000  # prompts, pairs, steps, items
MAX_SEED = 2**32 - 1


def _ranged(default: Any, ok: Callable[[Any], bool], expected: str) -> Any:
    return field(default=default, metadata={"ok": ok, "expected": expected})


def _int_in(default: int | None, low: int, high: int, note: str = "") -> Any:
    """An integer key with both bounds: every count and size has an upper one, so a typo of a few zeros is refused
    here rather than found as an allocation that never ends."""
    return _ranged(
        default, lambda v: low <= v <= high, f"an integer in [{low}, {high}]" + (f" ({note})" if note else "")
    )


def _positive_int(default: int, high: int) -> Any:
    return _int_in(default, 1, high)


def _number_in(default: float | None, low: float, high: float, *, open_low: bool = False) -> Any:
    ok = (lambda v: low < v <= high) if open_low else (lambda v: low <= v <= high)
    return _ranged(default, ok, f"a number in {'(' if open_low else '['}{low:g}, {high:g}]")


def _unit_interval(default: float, *, open_low: bool = True) -> Any:
    if open_low:
        return _ranged(default, lambda v: 0 < v <= 1, "a number in (0, 1]")
    return _ranged(default, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def _registered(default: str, registry: Registry) -> Any:
    """A name the registry holds (keep rules in select.py, strategies in strategies.py): no copied list here."""
    return field(default=default, metadata={"ok": lambda v: v in registry, "expected": registry.expected})


def _one_of(default: str, *choices: str) -> Any:
    return _ranged(default, lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


@dataclass(frozen=True)
class ModelSpec:
    """A model and the backend that serves it (tskd_lite/backends/): by default a GGUF in-process through
    llama.cpp, optionally with a GGUF LoRA adapter applied at load; with backend = "transformers", a Hugging Face
    folder (safetensors) in-process, optionally with a PEFT adapter folder in `lora`; with backend = "openai", a
    model an OpenAI-compatible completions server at `url` serves under the name `served_model` (`model`, optional
    there, is a local copy of its GGUF, read for the chat template and the tokenizer only); backend = "vllm" takes the
    same keys and scores in token ids with vLLM's prompt_logprobs. The backend checks its
    own keys at load (llama_cpp requires `model` and refuses `url`)."""

    model: Path | None = None
    lora: Path | None = None
    lora_scale: float = _ranged(1.0, lambda v: v != 0 and abs(v) <= 100, "a non-zero number in [-100, 100]")
    chat_template: str | None = None
    n_ctx: int = _int_in(2048, 64, MAX_TOKENS)
    backend: str = _registered("llama_cpp", BACKENDS)
    url: str | None = None  # served backends: the server's root ("http://127.0.0.1:8000"; a trailing /v1 is fine)
    served_model: str | None = None  # served backends: the model's name on the server (as /v1/models lists it)
    timeout: float = _number_in(600.0, 0, 86_400, open_low=True)  # served backends: seconds one request may take
    # backend = "transformers" only: the weights' type. "auto": float32 on the CPU, bfloat16 on a CUDA GPU that has
    # it; "nf4": 4-bit (bitsandbytes), for a model too big for the GPU otherwise
    dtype: str = _one_of("auto", "auto", "float32", "bfloat16", "nf4")
    # backend = "llama_cpp" only: re-encode the GGUF's weights once ("q8_0" scores about 1.5x faster than Q4_1 on a
    # CPU, bench/results.md) into the run folder's weights/ and load that copy; the recipe's file is only read
    requantize: str | None = _ranged(None, lambda v: v in REQUANTIZE_TYPES, "one of " + ", ".join(REQUANTIZE_TYPES))


@dataclass(frozen=True)
class Seeds:
    """Seed prompts: inline, from a file (one per line, or JSONL with a "prompt" field), or both."""

    prompts: tuple[str, ...] = ()
    file: Path | None = None


OPEN_FORMS = ("Tell me about {name}.", "What do you know about {name}?")


@dataclass(frozen=True)
class Expand:
    # fewshot: the generator writes a new prompt from examples in its chat template (the paper's); continue: it
    # continues a plain-text list of examples; sample: the teacher writes the user turn itself from its bare chat
    # template (after Magpie), opened with a few words of a kept prompt or nothing; entities: every kept prompt
    # that names a listed entity is asked again about each other entity (no model writes); follow: the same, with
    # the names found in the pool's prompts and the teacher's answers (and the list, if any). Unset, a recipe that
    # lists entities gets entities (the transfer benchmark's best arm), any other fewshot.
    strategy: str = _registered("fewshot", STRATEGIES)
    # names only (a catalogue, a directory), inline or one per line in a file: what the entities strategy fills in
    entities: tuple[str, ...] = ()
    entities_file: Path | None = None
    # entities and follow: besides the pool's own questions, each name is asked these open questions ({name} filled
    # in). The seeds' forms reach only the attributes the seeds ask about; an open question lets the teacher say
    # what it knows of the name whatever the forms (on the connected domain a person's role, which no seed asks,
    # is a third of the held-out facts). Unset: only the pool's forms; OPEN_FORMS are the benchmark's.
    open_forms: tuple[str, ...] = _ranged(
        (),
        lambda v: all("{name}" in f for f in v),
        "a list of texts each containing {name}",
    )
    rounds: int = _int_in(3, 0, 1000, "0: the seeds only")
    # Unset, both are sized by the strategy from what the recipe gives (strategies.py, `sized`): a writing
    # strategy 32 prompts a round and a stop at 64 kept pairs; entities and follow every form x name, no stop
    # short of the round limit. `check` prints what they came to.
    candidates_per_round: int | None = _int_in(None, 1, MAX_CANDIDATES, "unset: sized by the strategy")
    target_kept: int | None = _int_in(None, 1, 2**31 - 1, "a threshold; unset: sized by the strategy")
    few_shot: int = _positive_int(4, 64)
    temperature: float = _number_in(0.9, 0, 10)
    top_p: float = _unit_interval(0.95)
    max_prompt_tokens: int = _positive_int(96, MAX_TOKENS)
    instruction: str = _ranged(DEFAULT_INSTRUCTION, lambda v: "{examples}" in v, "text containing {examples}")
    # Paraphrase augmentation: for each prompt a round keeps, paraphrase_writer writes this many rephrasings, answered,
    # scored and selected like any other pair (0: off). Facts enter a model by fine-tuning only when seen in several
    # phrasings (Allen-Zhu & Li, Physics of LMs 3.1; Ovadia et al. 2024).
    paraphrases: int = _int_in(0, 0, 16)
    paraphrase_instruction: str = _ranged(DEFAULT_PARAPHRASE, lambda v: "{prompt}" in v, "text containing {prompt}")
    # "raw": the writer continues the instruction as plain text; "chat": it answers it in its chat template
    paraphrase_template: str = _one_of("raw", "raw", "chat")
    # Who rewrites: the un-tuned base by default. Rewording needs no private knowledge, and a fine-tuned teacher
    # asked to rewrite one of its questions answers it instead (seen on the world domain: "In Kamfaistun.").
    paraphrase_writer: str = _one_of("base", "base", "generator")
    # the keys above that the strategy sized because the recipe left them unset (for `check` to say so)
    sized_keys: tuple[str, ...] = field(default=(), metadata={"internal": True})
    strategy_chosen: bool = field(default=False, metadata={"internal": True})  # entities, for names given unset


@dataclass(frozen=True)
class Respond:
    max_answer_tokens: int = _positive_int(128, MAX_TOKENS)
    temperature: float = _number_in(0.0, 0, 10)
    top_p: float = _unit_interval(1.0)


@dataclass(frozen=True)
class Select:
    """Keep rule. ppl_ratio: PPL_base / PPL_teacher >= tau (TuneShift-KD); top_fraction: the best share of a round;
    contrast: ppl_ratio's test and the contrast test below, ranked by contrast; token_gap: the mean lift of the
    answer's top quarter of tokens >= log(tau) (TiTok's token-level gap as a keep rule), ranked by it; agreement:
    ppl_ratio's test and the agreement test below, ranked by the gap.

    top_fraction below 1 also caps ppl_ratio to that share of the round; max_teacher_ppl drops answers the teacher
    itself finds unlikely (degenerate or truncated output).
    """

    rule: str = _registered("ppl_ratio", RULES)
    tau: float = _number_in(1.5, 0, 1e6, open_low=True)
    # contrast: also keep only answers whose words outside the prompt's names and numbers the teacher finds at
    # least min_contrast nats likelier with the real names than with invented ones (tskd_lite/contrast.py),
    # averaged over contrast_swaps swaps: the teacher knows, rather than guesses or echoes
    min_contrast: float = _number_in(1.0, 0, 1e6)
    contrast_swaps: int = _int_in(2, 1, 8)
    # agreement: also keep only answers whose names and numbers (content words where it has none) the teacher
    # repeats in at least min_agreement of them on average across agreement_samples answers sampled at
    # agreement_temperature (tskd_lite/agreement.py, after SelfCheckGPT): it knows, rather than guesses
    min_agreement: float = _number_in(0.5, 0, 1)
    agreement_samples: int = _int_in(4, 1, 16)
    agreement_temperature: float = _number_in(1.0, 0, 10, open_low=True)
    top_fraction: float = _unit_interval(1.0)
    max_teacher_ppl: float | None = _number_in(None, 1, 1e12, open_low=True)
    min_answer_tokens: int = _positive_int(1, MAX_TOKENS)


@dataclass(frozen=True)
class Dedup:
    """near_threshold: Jaccard similarity of character shingles above which a prompt is a near-duplicate."""

    near_threshold: float = _unit_interval(0.8)


@dataclass(frozen=True)
class Output:
    """db holds the pool; dir holds training outputs, evaluation and the report. Its default is a folder named
    after the db beside it (runs/x/pool.db: runs/x/pool/), so recipes whose databases share a folder never share
    their outputs."""

    db: Path = Path("tskd.db")
    export: Path | None = None
    format: str = _one_of("chat", "chat", "alpaca")
    provenance: bool = False
    dir: Path | None = None

    @property
    def export_path(self) -> Path:
        return self.export or self.db.with_suffix(".jsonl")

    @property
    def run_dir(self) -> Path:
        return self.dir or self.db.with_name(self.db.stem if self.db.suffix else self.db.name + "-run")


@dataclass(frozen=True)
class Target:
    """The model that receives the knowledge: a Hugging Face folder (safetensors) or a GGUF file.

    A GGUF target is dequantized through transformers once and cached as safetensors in `cache`
    (default: next to the GGUF, named after it). chat_template overrides the tokenizer's; a model with
    neither is trained on a plain "Question/Answer" template, recorded in the report.
    """

    model: Path
    cache: Path | None = None
    chat_template: str | None = None

    @property
    def cache_dir(self) -> Path:
        """Where a GGUF target's safetensors conversion lives."""
        return self.cache or self.model.with_name(self.model.stem + ".hf")


@dataclass(frozen=True)
class Train:
    rank: int = _positive_int(16, 4096)
    alpha: float = _number_in(32.0, 0, 1e6, open_low=True)
    dropout: float = _unit_interval(0.05, open_low=False)
    target_modules: tuple[str, ...] = ("all-linear",)
    # The transfer benchmark's setting (docs/training.md, "How long to train"): a kept pool states each fact about
    # once, and facts new to the target fit only after many exposures (Allen-Zhu & Li 2023): 4 passes at 1e-3
    # recovered 15% on the world, 8 passes 96%; 3 epochs at 2e-4, the usual instruction-tuning default, train less
    # than the 4 passes. More than 8 cost what the target knew on small pools. Larger targets may want a lower rate.
    learning_rate: float = _ranged(1e-3, lambda v: 0 < v < 1, "a number in (0, 1)")
    schedule: str = _one_of("cosine", "cosine", "linear", "constant")
    warmup_steps: int = _int_in(0, 0, MAX_COUNT)
    epochs: int = _positive_int(8, 10_000)
    max_steps: int = _int_in(0, 0, MAX_COUNT, "0: run the epochs")
    batch_size: int = _positive_int(8, 65_536)
    grad_accum: int = _positive_int(1, 65_536)
    max_seq_len: int = _int_in(256, 16, MAX_TOKENS)
    val_fraction: float = _ranged(0.1, lambda v: 0 <= v < 0.5, "a number in [0, 0.5)")
    # Stop once the held-out loss has not improved for this many epochs and keep the best epoch's adapter
    # (0: run every epoch). New facts are fitted slowly; the held-out phrasings say when to stop, not the
    # training loss (Gekhman et al. 2024).
    patience: int = _int_in(0, 0, 10_000, "0: no early stopping")
    # Replayed pairs per training pair: the target's own answers to general prompts, written before training and
    # trained on beside the distilled pairs, so that a narrow dataset does not erase what it knew (0: none). On by
    # default: on the countries domain it kept what the target knew and recovered more (docs/benchmark.md).
    replay: float = _number_in(0.25, 0, 10)
    # ... and at least this many where replay is on: 0.25 per pair is 3-5 answers beside a pool of a dozen pairs,
    # which did not keep what the target knew on countries; the floor makes a tiny pool train mostly on the
    # target's own answers (docs/benchmark.md, "A replay floor on countries")
    replay_min: int = _int_in(32, 0, MAX_COUNT)
    replay_prompts: Path | None = None  # one prompt per line (default: the bundled general prompts)
    quantize: str = _one_of("auto", "auto", "nf4", "none")
    token_top_fraction: float = _unit_interval(1.0)
    checkpoint_every: int = _positive_int(50, MAX_COUNT)
    seed: int = _int_in(0, 0, MAX_SEED)  # numpy's generators take no negative seed


@dataclass(frozen=True)
class Eval:
    """A held-out JSONL of {"prompt", "answer", "aliases"?} that the pipeline never sees."""

    file: Path
    max_answer_tokens: int = _positive_int(64, MAX_TOKENS)
    limit: int = _int_in(0, 0, MAX_COUNT, "0: every item")


@dataclass(frozen=True)
class Recipe:
    teacher: ModelSpec
    base: ModelSpec
    seeds: Seeds
    generator: ModelSpec | None = None
    expand: Expand = Expand()
    respond: Respond = Respond()
    select: Select = Select()
    dedup: Dedup = Dedup()
    output: Output = Output()
    target: Target | None = None
    train: Train = Train()
    eval: Eval | None = None
    seed: int = _int_in(0, 0, MAX_SEED)
    threads: int = _int_in(0, 0, 1024, "0: all cores")
    parallel: int = _int_in(8, 1, 64)
    path: Path = field(default=Path("recipe.toml"), metadata={"internal": True})
    text: str = field(default="", metadata={"internal": True})

    @property
    def generator_spec(self) -> ModelSpec:
        return self.generator or self.teacher

    def model_files(self) -> dict[str, Path]:
        """Every GGUF the pool is made with (models and adapters), keyed by its recipe key."""
        out = {}
        for role in ("teacher", "base", "generator"):
            spec = getattr(self, role)
            for key in ("model", "lora"):
                if spec is not None and getattr(spec, key) is not None:
                    out[f"{role}.{key}"] = getattr(spec, key)
        return out


# Keys that may change between a run and its resume without changing the pool already computed: where the output
# goes, how many threads, how far the run goes (extending rounds or the target is legitimate), everything
# downstream of the dataset (training has its own checkpoint check), and the models' context sizes.
RESUMABLE_KEYS = (
    "output.",
    "threads",
    "expand.rounds",
    "expand.target_kept",
    "target.",
    "train.",
    "eval.",
    # the context size decides only whether a prompt fits, and raising it is how a run past an overflow resumes
    "teacher.n_ctx",
    "base.n_ctx",
    "generator.n_ctx",
)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe; raise TskdError with one line naming the file and key on any problem.

    overrides: tables and keys laid over the file's before validation (how a benchmark varies one recipe).
    """
    path = Path(path)
    if path.exists():  # a missing recipe gets its own message below
        check_input_file(path, f"{path}: recipe", max_bytes=16 << 20)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TskdError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TskdError(f"{path}: cannot read recipe: {e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TskdError(f"{path}: not valid TOML: {e}") from None
    raw = merged(raw, overrides or {})
    builder = _Builder(path)
    recipe = builder.build(Recipe, raw, "")
    recipe = dataclasses.replace(recipe, path=path.resolve(), text=text)
    seeds = _load_seeds(recipe.seeds, path)
    recipe = dataclasses.replace(recipe, seeds=Seeds(prompts=seeds, file=recipe.seeds.file))
    strategy_set = isinstance(raw.get("expand"), dict) and "strategy" in raw["expand"]
    recipe = dataclasses.replace(recipe, expand=_load_entities(recipe.expand, path, strategy_set))
    for name in ("teacher", "base", "generator"):
        spec = getattr(recipe, name)
        if spec is not None:
            BACKENDS[spec.backend].check(spec, f"{path}: {name}")
    if recipe.target is not None:
        _check_target(recipe.target.model, f"{path}: target.model")
        if not recipe.target.model.is_dir():
            check_cache(recipe.target, f"{path}: target.cache")
    if recipe.eval is not None:
        read_eval_file(recipe.eval.file, f"{path}: eval.file")
    if recipe.train.replay_prompts is not None:
        where = f"{path}: train.replay_prompts"
        if not any(line.strip() for line in read_lines(recipe.train.replay_prompts, where)):
            raise TskdError(f"{where}: {recipe.train.replay_prompts} holds no prompts (one per line)")
    _check_output_paths(recipe)
    # The base only scores text rendered with the teacher's template; the models that write need their own.
    writers = ["teacher", "generator"]
    if recipe.expand.paraphrases and recipe.expand.paraphrase_template == "chat":
        writers.append(recipe.expand.paraphrase_writer)
    for name in writers:
        spec = getattr(recipe, name)
        if spec is not None:
            try:
                # in a child process with a memory and time budget: a template can cost what no sandbox stops
                check_template(template_source(spec.chat_template, spec.model, name), name)
            except TskdError as e:
                raise TskdError(f"{path}: {e}") from None
    return recipe


def merged(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """raw with overrides laid over it, table by table: a key the overrides do not name keeps its value."""
    out = dict(raw)
    for key, value in overrides.items():
        both_tables = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both_tables else value
    return out


class _Builder:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, expected: str, value: Any) -> typing.NoReturn:
        raise TskdError(f"{self.path}: {key}: expected {expected}, got {value!r}")

    def build(self, cls: type, table: Any, prefix: str) -> Any:
        where = prefix.rstrip(".") or "top level"
        if not isinstance(table, dict):
            self.fail(where, "a table", table)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        unknown = sorted(set(table) - set(fields))
        if unknown:
            kinds = {f: _table_of(hints[f]) is not None for f in sorted(fields)}
            self.unknown(unknown[0], table[unknown[0]], kinds, prefix)
        values = {}
        for name, f in fields.items():
            key = prefix + name
            if name not in table:
                if f.default is dataclasses.MISSING:
                    raise TskdError(f"{self.path}: {key}: required key is missing")
                continue
            value = self.convert(hints[name], table[name], key)
            ok = f.metadata.get("ok")
            if ok is not None and value is not None and not ok(value):
                expected = f.metadata["expected"]
                self.fail(key, expected() if callable(expected) else expected, table[name])
            values[name] = value
        return cls(**values)

    def unknown(self, name: str, value: Any, fields: dict[str, bool], prefix: str) -> typing.NoReturn:
        """One line naming the file and the key, with the key most likely meant: a close spelling of one of the same
        kind (table or value) in the same table, case folded ("tua", "Tau"), else the same name in another table
        (tau under [expand] belongs in [select]). fields: each key of the table, and whether it is a table."""
        table = isinstance(value, dict)
        close = difflib.get_close_matches(name.lower(), [f for f, is_table in fields.items() if is_table == table], n=1)
        elsewhere = [k for k in _dotted_keys() if k.rsplit(".", 1)[-1] == name.lower()]
        meant = prefix + close[0] if close else (elsewhere[0] if elsewhere else None)
        hint = f', did you mean "{meant}"?' if meant else ""
        where = prefix.rstrip(".") or "the top level"
        raise TskdError(
            f"{self.path}: {prefix}{name}: unknown {'table' if table else 'key'}{hint} "
            f"({where} takes: {', '.join(fields)})"
        )

    def convert(self, hint: Any, value: Any, key: str) -> Any:
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            (inner,) = [a for a in args if a is not type(None)]
            return self.convert(inner, value, key)
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, key + ".")
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(key, "true or false", value)
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(key, "an integer", value)
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self.fail(key, "a finite number", value)
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                self.fail(key, "a string", value)
            return value
        if hint is Path:
            if not isinstance(value, str) or not value.strip():
                self.fail(key, "a path string", value)
            return (self.path.parent / value).resolve()
        if typing.get_origin(hint) is tuple:
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                self.fail(key, "a list of non-empty strings", value)
            return tuple(v.strip() for v in value)
        raise TypeError(f"recipe field {key} has unsupported type {hint}")


def _table_of(hint: Any) -> type | None:
    """The dataclass a field's type hint names (Select, or Target in `Target | None`): None for a value's."""
    return next((a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)), None)


@functools.cache
def _dotted_keys() -> tuple[str, ...]:
    """Every key a recipe takes, dotted ("select.tau"), in the order the tables are declared."""
    out: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            if _table_of(hint) is not None:
                walk(_table_of(hint), f"{prefix}{name}.")
            elif not any(f.name == name and f.metadata.get("internal") for f in dataclasses.fields(cls)):
                out.append(prefix + name)

    walk(Recipe, "")
    return tuple(out)


SOURCE_MARKER = "tskd_source.json"  # in every target conversion tskd-lite writes: what marks a cache as its own


def check_cache(target: Target, where: str) -> None:
    """Raise TskdError unless a GGUF target's cache path is free or a conversion tskd-lite wrote (a user's own
    Hugging Face folder there is never replaced)."""
    cache = target.cache_dir
    if not cache.exists() and not cache.is_symlink():
        return
    if cache.is_symlink() or not cache.is_dir():
        raise TskdError(f"{where}: {cache} exists and is not a folder tskd-lite made; choose another target.cache")
    if not (cache / SOURCE_MARKER).is_file():
        raise TskdError(
            f"{where}: {cache} exists and is not a conversion tskd-lite wrote (no {SOURCE_MARKER}); choose another "
            "target.cache, or set target.model to that folder to train it"
        )


def _check_target(model: Path, where: str) -> None:
    if model.is_dir():
        check_hf_folder(model, where)
    else:
        check_gguf(model, where)


def _check_output_paths(recipe: Recipe) -> None:
    """Each place a run writes is a file where a file goes and a folder where a folder goes, under folders (not
    under a file): found here as one line naming the key, not mid-run as an OSError."""
    out = recipe.output
    places = [
        ("output.db", out.db, False),
        ("output.export", out.export_path, False),
        ("output.dir", out.run_dir, True),
    ]
    if recipe.target is not None and not recipe.target.model.is_dir():
        places.append(("target.cache", recipe.target.cache_dir, True))
    if out.export_path.resolve() == out.db.resolve():
        raise TskdError(f"{recipe.path}: output.export: {out.export_path} is output.db itself")
    for key, place, folder in places:
        where = f"{recipe.path}: {key}"
        if os.path.lexists(place) and place.is_dir() != folder:
            raise TskdError(f"{where}: {place} exists and is {'not a folder' if folder else 'a folder'}")
        if not folder and os.path.lexists(place) and not place.is_file():
            raise TskdError(f"{where}: {place} exists and is not a regular file")
        above = place.parent
        while not os.path.lexists(above):
            above = above.parent
        if not above.is_dir():
            raise TskdError(f"{where}: {place} lies under {above}, which is not a folder")


def _load_seeds(seeds: Seeds, recipe_path: Path) -> tuple[str, ...]:
    prompts = list(seeds.prompts)
    if seeds.file is not None:
        prompts += _read_seed_file(seeds.file, recipe_path)
    if not prompts:
        where = f"seeds.file: {seeds.file} holds no prompt" if seeds.file else "seeds"
        raise TskdError(f"{recipe_path}: {where}: expected at least one seed prompt (seeds.prompts or seeds.file)")
    return tuple(dict.fromkeys(prompts))


def _load_entities(cfg: Expand, recipe_path: Path, strategy_set: bool) -> Expand:
    names = list(cfg.entities)
    if cfg.entities_file is not None:
        where = f"{recipe_path}: expand.entities_file"
        names += [line.strip() for line in read_lines(cfg.entities_file, where) if line.strip()]
    cfg = dataclasses.replace(cfg, entities=tuple(dict.fromkeys(names)))
    if names and not strategy_set:  # names given, strategy unset: every name is asked about (the benchmark's best)
        cfg = dataclasses.replace(cfg, strategy="entities", strategy_chosen=True)
    strategy = STRATEGIES[cfg.strategy]
    strategy.check(cfg, f"{recipe_path}: expand")
    sized = {k: v for k, v in strategy.sized(cfg).items() if getattr(cfg, k) is None}
    return dataclasses.replace(cfg, **sized, sized_keys=tuple(sized))


def _read_seed_file(file: Path, recipe_path: Path) -> list[str]:
    where = f"{recipe_path}: seeds.file"
    if file.suffix != ".jsonl":
        return [line.strip() for line in read_lines(file, where) if line.strip()]
    prompts = []
    for at, row in read_jsonl(file, where):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise TskdError(f'{at}: expected an object with a non-empty string "prompt"')
        prompts.append(row["prompt"].strip())
    return prompts


def flatten(recipe: Recipe) -> dict[str, Any]:
    """The recipe as dotted keys with JSON values: what a run records and what a resume compares."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            if f.metadata.get("internal"):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = _jsonable(value)

    walk(recipe, "")
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def changed_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys whose change would alter results already computed (RESUMABLE_KEYS excepted). A key that a run made
    by an earlier version did not record counts as its default: a setting added later, left at its default,
    changes nothing that run computed."""
    defaults = _flat_defaults()
    keys = sorted(set(recorded) | set(current))
    return [
        k
        for k in keys
        if recorded.get(k, defaults.get(k)) != current.get(k)
        and not any(k == r or k.startswith(r) for r in RESUMABLE_KEYS)
    ]


def _flat_defaults() -> dict[str, Any]:
    """Every recipe key that has a default, as flatten() writes it."""
    out: dict[str, Any] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            if dataclasses.is_dataclass(hints[f.name]) and f.default is not dataclasses.MISSING:
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif f.default is not dataclasses.MISSING:
                out[prefix + f.name] = _jsonable(f.default)

    walk(Recipe, "")
    return out


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(flatten(recipe), sort_keys=True).encode()).hexdigest()[:16]
