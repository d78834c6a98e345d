"""Damaged and odd input: each gives one line and exit 1 (or loads), never a traceback, never a partial output.

A seeded corpus, the same every run: 240 damaged copies of a GGUF header, for each JSONL reader 32 hand-written odd
files (each with the outcome it must have) and 43 random cuts and byte changes of a good file, and chat templates
that fail to compile or fail while rendering. What is accepted must also be right: a GGUF let through is one the
gguf package reads alike and whose structure is the valid file's, and a JSONL file read gives exactly its records.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import recipe_dict, write_recipe

from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.gguf_meta import check_gguf, read_header
from tskd_lite.jsonl import EvalItem, read_eval_file
from tskd_lite.recipe import load_recipe
from tskd_lite.train import read_pairs


def _damaged_ggufs(original: bytes, header_end: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(60):  # truncated anywhere, in the header most often
        out.append(original[: int(rng.integers(0, header_end if rng.random() < 0.7 else len(original)))])
    for _ in range(120):  # 1 to 4 bytes of the header changed
        buf = bytearray(original)
        for _ in range(int(rng.integers(1, 5))):
            buf[int(rng.integers(4, header_end))] = int(rng.integers(0, 256))
        out.append(bytes(buf))
    huge = [2**64 - 1, 2**63, 2**40, 2**32 + 1, 0]
    for _ in range(60):  # a count, length or offset replaced by a huge (or zero) number
        buf = bytearray(original)
        at = int(rng.choice([8, 16, 24])) if rng.random() < 0.3 else int(rng.integers(4, header_end - 8))
        struct.pack_into("<Q", buf, at, huge[int(rng.integers(len(huge)))])
        out.append(bytes(buf))
    return out


def _tensor_end(header) -> int:
    """Where the last tensor's data ends: a file shorter than this is truncated."""
    from gguf import GGML_QUANT_SIZES

    ends = []
    for dims, kind, offset in header.tensors.values():
        block, type_size = GGML_QUANT_SIZES[kind]
        ends.append(header.data_start + offset + math.prod(dims) // block * type_size)
    return max(ends)


def _reference_view(path):
    """The header as the gguf package's own reader sees it (keys, tensor table, data start), or the reason it fails."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        keys = {name for name in reader.fields if not name.startswith("GGUF.")}
        tensors = {
            t.name: (tuple(int(d) for d in t.shape), int(t.tensor_type), int(t.data_offset) - reader.data_offset)
            for t in reader.tensors
        }
        return keys, tensors, reader.data_offset
    except Exception as e:  # noqa: BLE001 (any failure of the reference reader is the finding)
        return f"{type(e).__name__}: {e}"[:200]


def _structure(header) -> tuple:
    """What must survive any damage a header check lets through: the set of keys, the architecture and alignment,
    and the tensor table (names, dims, types, offsets) with the data start. Only values (token texts and types,
    the template's text, numbers) may differ: damage there is not something a header check can see."""
    return (
        sorted(header.fields),
        header.fields.get("general.architecture"),
        header.fields.get("general.alignment", 32),
        header.tensors,
        header.data_start,
    )


def test_damaged_gguf_headers_give_one_line_never_a_traceback(tiny, tmp_path):
    original = tiny["teacher"].read_bytes()
    valid = check_gguf(tiny["teacher"], "t")
    header_end = valid.data_start
    tensor_end = _tensor_end(valid)
    assert tensor_end == len(original)  # the writer leaves nothing after the last tensor
    assert _reference_view(tiny["teacher"]) == (set(valid.fields), valid.tensors, valid.data_start)
    corpus = _damaged_ggufs(original, header_end)
    assert len(corpus) >= 200
    truncated = [i for i, data in enumerate(corpus) if len(data) < len(original) and original.startswith(data)]
    assert len([i for i in truncated if len(corpus[i]) < header_end]) >= 30  # the corpus does cut headers
    wrongly_accepted = []
    for i, data in enumerate(corpus):
        path = tmp_path / f"d{i}.gguf"
        path.write_bytes(data)
        try:
            header = check_gguf(path, "teacher.model")
        except TskdError as e:
            assert "\n" not in str(e) and str(e).startswith("teacher.model: ")
            continue
        # anything else (OverflowError, ZeroDivisionError, ...) fails the test with its traceback
        if i in truncated:  # cut in the header or in the tensor data: either way a tensor ends past the end
            wrongly_accepted.append(f"#{i}: truncated to {len(data)} of {len(original)} bytes")
            continue
        # Accepted damage must leave a file as good as the valid one to a header check: the gguf package's reader
        # reads it the same way (no name that is not UTF-8, no table it parses differently), and its structure
        # is the valid file's (no renamed key or tensor, no moved, resized or dropped tensor).
        reference = _reference_view(path)
        if reference != (set(header.fields), header.tensors, header.data_start):
            wrongly_accepted.append(f"#{i}: the gguf package reads it otherwise: {str(reference)[:160]}")
        elif _structure(header) != _structure(valid):
            keys = sorted(set(header.fields) ^ set(valid.fields))
            tensors = sorted(set(header.tensors.items()) ^ set(valid.tensors.items()))
            wrongly_accepted.append(f"#{i}: structure changed: keys {keys} tensors {tensors}"[:300])
    assert not wrongly_accepted, "damaged files accepted:\n" + "\n".join(wrongly_accepted)


def test_the_cli_turns_a_damaged_model_into_one_line_and_exit_1(tiny, tmp_path):
    original = tiny["teacher"].read_bytes()
    header_end = read_header(tiny["teacher"], "t").data_start
    runner = CliRunner()
    for i, data in enumerate(_damaged_ggufs(original, header_end)[::8]):
        path = tmp_path / f"d{i}.gguf"
        path.write_bytes(data)
        raw = recipe_dict(tiny, tmp_path / f"r{i}.db")
        raw["teacher"]["model"] = path
        recipe = write_recipe(tmp_path / f"r{i}.toml", raw)
        result = runner.invoke(main, ["check", str(recipe)])
        if result.exit_code == 0:
            continue  # damage the header check cannot see (a changed character of a token)
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
        assert not (tmp_path / f"r{i}.db").exists()  # nothing written for a recipe that does not check


READERS = ("seeds", "eval", "dataset")
ALL, NONE, SEEDS = frozenset(READERS), frozenset(), frozenset({"seeds"})
_NO_ANSWER = object()


def _record(reader: str, prompt, answer=_NO_ANSWER) -> dict:
    """One record in the reader's own format: prompt and answer for seeds and eval, a chat record for a dataset."""
    if reader == "dataset":
        messages = [{"role": "user", "content": prompt}]
        if answer is not _NO_ANSWER:
            messages.append({"role": "assistant", "content": answer})
        return {"messages": messages}
    return {"prompt": prompt} if answer is _NO_ANSWER else {"prompt": prompt, "answer": answer}


def _line(record, *, ascii_only: bool = True) -> bytes:
    return json.dumps(record, ensure_ascii=ascii_only).encode()


def _good_file(reader: str) -> bytes:
    second = {"instruction": "Name a colour.", "output": "Red"} if reader == "dataset" else None
    records = [_record(reader, "What is 2 plus 2?", "4"), second or _record(reader, "Name a colour.", "Red")]
    return b"\n".join(_line(r) for r in records)


def _odd_cases(reader: str) -> list[tuple[str, bytes, frozenset]]:
    """Hand-written odd files: (what, bytes, the readers that must accept it; every other reader must refuse it)."""
    rec = lambda *a: _line(_record(reader, *a))  # noqa: E731
    good = _good_file(reader)
    return [
        ("not UTF-8", b"\xff\xfe" + good, NONE),
        ("a NUL inside a string", good.replace(b"2", b"\x00"), NONE),
        ("a byte-order mark", b"\xef\xbb\xbf" + good, ALL),
        ("CRLF line ends", good.replace(b"\n", b"\r\n") + b"\r\n", ALL),
        ("blank lines around the records", b"\n \n" + good + b"\n\t\n", ALL),
        (
            "raw U+2028, U+2029 and U+0085 inside strings",
            _line(_record(reader, "a\u2028b", "c\u2029d\u0085e"), ascii_only=False),
            ALL,
        ),
        ("a 10 MB line", rec("x" * (10 << 20), "y"), ALL),
        ("a list", b"[1, 2, 3]", NONE),
        ("a number for the prompt", rec(3, "4"), NONE),
        ("no answer", rec("p"), SEEDS),
        ("an empty prompt", rec("", "a"), NONE),
        ("a blank prompt", rec(" \t ", "a"), NONE),
        ("a lone surrogate in the prompt", rec("\ud800 what?", "a"), NONE),  # no UTF-8 text holds one
        ("a null answer", rec("p", None), SEEDS),
        ("a number for the answer", rec("p", 4), SEEDS),
        ("an empty answer", rec("p", ""), SEEDS),
        ("NaN for the answer", b'{"prompt": "p", "answer": NaN}', SEEDS),
        ("aliases", b'{"prompt": "p", "answer": "a", "aliases": ["b"]}', frozenset({"seeds", "eval"})),
        ("a number among the aliases", b'{"prompt": "p", "answer": "a", "aliases": ["b", 3]}', SEEDS),
        ("null", b"null", NONE),
        ("a bare string", b'"just a string"', NONE),
        ("a cut object", b"{", NONE),
        ("an empty file", b"", NONE),
        ("only line ends", b"\n\n\n", NONE),
        ("a good record, then a bad line", good + b"\n{", NONE),  # one bad line refuses the file: nothing skipped
        ("a chat record without an answer", b'{"messages": [{"role": "user", "content": "q"}]}', NONE),
        ("messages that are not a list", b'{"messages": "not a list"}', NONE),
        ("messages that are strings", b'{"messages": ["user", "assistant"]}', NONE),
        (
            "an alpaca record with an input",
            b'{"instruction": "Name one.", "input": "A colour.", "output": "Red"}',
            frozenset({"dataset"}),
        ),
        ("an alpaca record with a number for the instruction", b'{"instruction": 3, "output": "Red"}', NONE),
        ("an alpaca record with a null output", b'{"instruction": "Name one.", "output": null}', NONE),
        (
            "an alpaca record with a number for the input",
            b'{"instruction": "Name one.", "input": 5, "output": "o"}',
            NONE,
        ),
    ]


def _random_damage(reader: str, rng: np.random.Generator, n: int = 43) -> list[bytes]:
    """Random cuts and byte changes of a good file of the reader's format."""
    out = []
    for _ in range(n):
        data = bytearray(_good_file(reader))
        if rng.random() < 0.5:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        out.append(bytes(data))
    return out


def _text(value) -> bool:
    """A non-blank string that UTF-8 can hold (JSON's \\ud800 escapes give strings it cannot)."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_record(reader: str, row):
    """What one well-formed record reads as, or None where the record is not one the reader takes."""
    if not isinstance(row, dict):
        return None
    if reader == "seeds":
        return row["prompt"].strip() if _text(row.get("prompt")) else None
    if reader == "eval":
        aliases = row.get("aliases", [])
        if not (_text(row.get("prompt")) and _text(row.get("answer")) and isinstance(aliases, list)):
            return None
        if not all(isinstance(a, str) and (not a or _text(a)) for a in aliases):
            return None
        return EvalItem(row["prompt"], row["answer"], tuple(aliases))
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            return None
        turns = {m["role"]: m["content"] for m in messages}
        if not (_text(turns.get("user")) and _text(turns.get("assistant"))):
            return None
        return (turns["user"], turns["assistant"], None)
    extra = row.get("input")
    if not (_text(row.get("instruction")) and _text(row.get("output"))):
        return None
    if extra is not None and not (isinstance(extra, str) and (not extra or _text(extra))):
        return None
    return (row["instruction"] + (f"\n\n{extra}" if extra else ""), row["output"], None)


def _expected(reader: str, data: bytes) -> list | None:
    """What the reader must give for a file, from the formats alone: None where it must refuse the file.

    UTF-8 (a leading byte-order mark dropped), lines split at \\n, \\r\\n and \\r only, blank lines skipped, every
    other line one well-formed record, and at least one record (seeds: the prompts stripped, repeats dropped)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    out = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line.strip():
            continue
        try:
            item = _valid_record(reader, json.loads(line))
        except ValueError:
            return None
        if item is None:
            return None
        out.append(item)
    if reader == "seeds":
        out = list(dict.fromkeys(out))
    return out or None


def _read(reader: str, path, tiny, tmp_path) -> list:
    if reader == "dataset":
        return [tuple(p) for p in read_pairs(path)]
    raw = recipe_dict(tiny, tmp_path / "unused.db")
    if reader == "seeds":
        raw["seeds"] = {"file": path}
    else:
        raw["eval"] = {"file": path}
    recipe = load_recipe(write_recipe(tmp_path / "r.toml", raw))
    if reader == "seeds":
        return list(recipe.seeds.prompts)
    return read_eval_file(path, "eval.file")  # what load_recipe checked, read again to compare


@pytest.mark.parametrize("reader", READERS)
def test_damaged_or_odd_jsonl_files_load_or_give_one_line(tiny, tmp_path, reader):
    odd = _odd_cases(reader)
    corpus = [(what, data, reader in accepted_by) for what, data, accepted_by in odd]
    corpus += [
        (f"random damage {i}", data, None) for i, data in enumerate(_random_damage(reader, np.random.default_rng(1)))
    ]
    assert len(corpus) >= 60
    # the hand-written outcomes and the format rules of _expected say the same thing
    for what, data, accept in corpus:
        if accept is not None:
            assert (_expected(reader, data) is not None) == accept, what
    wrong = []
    for i, (what, data, _accept) in enumerate(corpus):
        path = tmp_path / f"f{i}.jsonl"
        path.write_bytes(data)
        expected = _expected(reader, data)
        try:
            got = _read(reader, path, tiny, tmp_path)
        except TskdError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)[:200]
            if expected is not None:
                wrong.append(f"{what}: refused ({str(e)[:150]}), expected {str(expected)[:150]}")
            continue
        # anything else (UnicodeEncodeError, KeyError, ...) fails the test with its traceback
        if expected is None:
            wrong.append(f"{what}: accepted as {str(got)[:150]}, expected a refusal")
        elif got != expected:
            wrong.append(f"{what}: read as {str(got)[:150]}, expected {str(expected)[:150]}")
    assert not wrong, f"{reader}:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}", "not a valid Jinja template"),
        ("{{ messages[3]['content'] }}", "failed while rendering"),
        ("{{ messages[0]['content'] | int + 'x' }}", "failed while rendering"),
        ("{{ raise_exception('no system role') }}", "chat template raised: no system role"),
    ],
)
def test_broken_chat_templates_are_refused_at_load(tiny, tmp_path, template, message):
    raw = recipe_dict(tiny, tmp_path / "r.db")
    raw["teacher"]["chat_template"] = template
    with pytest.raises(TskdError, match=message):
        load_recipe(write_recipe(tmp_path / "r.toml", raw))
