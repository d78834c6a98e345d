"""The bundled real models: `tskd-lite models` on an empty folder (what a fresh machine's `just demo` does first)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tskd_lite import atomic
from tskd_lite.cli import main
from tskd_lite.gguf_meta import check_gguf
from tskd_lite.models import GEMMA3, SMOLLM2


def test_models_fill_an_empty_folder_with_both_real_models(tmp_path):
    result = CliRunner().invoke(main, ["models", "--dir", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    for name in (SMOLLM2, GEMMA3):
        path = tmp_path / "models" / name
        check_gguf(path, name)  # a whole, readable GGUF
        assert f"{path}" in result.output or name in result.output
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted([GEMMA3, SMOLLM2])  # no .part left
    again = CliRunner().invoke(main, ["models", "--dir", str(tmp_path / "models")])
    assert again.exit_code == 0


def test_replacing_path_renames_when_whole_and_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic.replacing_path(target) as part:
        assert part.parent == tmp_path and part != target and part.stat().st_size == 0
        part.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic.replacing_path(target) as part:
        part.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
