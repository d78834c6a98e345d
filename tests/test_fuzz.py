"""Damaged and odd input: each gives one line and exit 1 (or loads), never a traceback, never a partial output.

A seeded corpus, the same every run: 240 damaged copies of a GGUF header, 60 damaged or odd JSONL files, and
chat templates that fail to compile or fail while rendering.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import recipe_dict, write_recipe

from tskd_lite.cli import main
from tskd_lite.errors import TskdError
from tskd_lite.gguf_meta import check_gguf, read_header
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


def test_damaged_gguf_headers_give_one_line_never_a_traceback(tiny, tmp_path):
    original = tiny["teacher"].read_bytes()
    header_end = read_header(tiny["teacher"], "t").data_start
    corpus = _damaged_ggufs(original, header_end)
    assert len(corpus) >= 200
    refused = 0
    for i, data in enumerate(corpus):
        path = tmp_path / f"d{i}.gguf"
        path.write_bytes(data)
        try:
            check_gguf(path, "teacher.model")
        except TskdError as e:
            assert "\n" not in str(e) and str(e).startswith("teacher.model: ")
            refused += 1
        # anything else (OverflowError, ZeroDivisionError, ...) fails the test with its traceback
    # a changed byte inside a token's text or a float is not damage a header check can see; most damage is
    assert refused >= 0.6 * len(corpus)


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


def _odd_jsonl(rng: np.random.Generator) -> list[bytes]:
    good = [{"prompt": "What is 2 plus 2?", "answer": "4"}, {"prompt": "Name a colour.", "answer": "Red"}]
    lines = [json.dumps(r).encode() for r in good]
    out = [
        b"\xff\xfe" + b"\n".join(lines),  # not UTF-8
        b"\n".join(lines).replace(b"2", b"\x00"),  # NUL inside a string
        b"\xef\xbb\xbf" + b"\n".join(lines),  # BOM: fine
        json.dumps({"prompt": "a\u2028b", "answer": "c\u2029d\u0085e"}, ensure_ascii=False).encode(),  # fine
        b'{"prompt": "' + b"x" * (10 << 20) + b'", "answer": "y"}',  # a 10 MB line
        b"[1, 2, 3]",
        b'{"prompt": 3, "answer": "4"}',
        b'{"prompt": "p"}',
        b'{"prompt": "", "answer": "a"}',
        b'{"prompt": "p", "answer": null}',
        b"null",
        b'"just a string"',
        b"{",
        b"",
        b"\n\n\n",
        b'{"messages": [{"role": "user", "content": "q"}]}',
        b'{"messages": "not a list"}',
    ]
    while len(out) < 60:  # random cuts and flips of a good file
        data = bytearray(b"\n".join(lines))
        if rng.random() < 0.5:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("reader", ["seeds", "eval", "dataset"])
def test_damaged_or_odd_jsonl_files_load_or_give_one_line(tiny, tmp_path, reader):
    corpus = _odd_jsonl(np.random.default_rng(1))
    assert len(corpus) >= 50
    for i, data in enumerate(corpus):
        path = tmp_path / f"f{i}.jsonl"
        path.write_bytes(data)
        try:
            if reader == "dataset":
                read_pairs(path)
            else:
                raw = recipe_dict(tiny, tmp_path / "unused.db")
                if reader == "seeds":
                    raw["seeds"] = {"file": path}
                else:
                    raw["eval"] = {"file": path}
                load_recipe(write_recipe(tmp_path / "r.toml", raw))
        except TskdError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)[:200]


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
