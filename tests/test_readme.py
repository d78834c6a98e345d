"""The README and docs/ are part of the interface: the recipe reference's blocks load, the commands the README lists
exist, and every relative link points at a file."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from click.testing import CliRunner

from tskd_lite.cli import main
from tskd_lite.recipe import load_recipe, merged

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RECIPE_REFERENCE = (ROOT / "docs" / "recipe.md").read_text()  # the full recipe reference and the fragment after it
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _toml_blocks(text: str = RECIPE_REFERENCE) -> list[dict]:
    return [tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", text, re.S)]


def test_every_toml_block_parses_and_the_reference_passes_check_with_real_files(tiny, tmp_path):
    blocks = _toml_blocks()
    assert len(blocks) >= 2
    reference = blocks[0]
    # the reference names placeholder files; point them at the tiny models and files made here, keep every key
    (tmp_path / "seeds.txt").write_text("One?\n")
    (tmp_path / "entities.txt").write_text("Ada Lin\nBo Kra\n")
    (tmp_path / "eval.jsonl").write_text('{"prompt": "p", "answer": "a"}\n')
    files = {
        "teacher": {"model": str(tiny["teacher"])},
        "base": {"model": str(tiny["base"])},
        "generator": {"model": str(tiny["teacher"])},
        "seeds": {"file": str(tmp_path / "seeds.txt")},
        "target": {"model": str(tiny["other"]), "cache": str(tmp_path / "target.hf")},
        "eval": {"file": str(tmp_path / "eval.jsonl")},
        "output": {"db": str(tmp_path / "x.db"), "export": str(tmp_path / "x.jsonl"), "dir": str(tmp_path)},
    }
    for role in ("teacher", "generator"):
        reference[role].pop("lora", None)  # the tiny models have no LoRA adapter to point at
    (tmp_path / "reference.toml").write_text("")
    recipe = load_recipe(tmp_path / "reference.toml", merged(reference, files))
    assert recipe.parallel == reference["parallel"] and recipe.expand.paraphrases == reference["expand"]["paraphrases"]
    # the list-continuation block is a fragment laid over a recipe
    load_recipe(
        tmp_path / "reference.toml", merged(merged(reference, files), {**blocks[1], "generator": files["generator"]})
    )


def test_every_toml_block_in_the_readme_and_docs_parses():
    for page in PAGES:
        _toml_blocks(page.read_text())  # raises on a block that is not TOML


def test_every_command_in_the_commands_table_exists_with_its_options():
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    runner = CliRunner()
    rows = re.findall(r"^\| `tskd-lite ([a-z-]+)([^`]*)` \|", table, re.M)
    assert len(rows) >= 10
    for command, rest in rows:
        help_text = runner.invoke(main, [command, "--help"]).output
        assert "Usage:" in help_text, command
        for option in re.findall(r"--[a-z-]+", rest):
            assert option in help_text, f"{command} {option}"


def test_help_lists_the_commands_in_workflow_order_each_on_one_whole_line():
    """click sorts commands by name and cuts their help at about 45 characters; tskd-lite lists them in the order
    a user meets them, the README's table in the same order, each command's whole first sentence on its line."""
    from tskd_lite.cli import TOOLS, WORKFLOW

    listing = CliRunner().invoke(main, ["--help"], terminal_width=80).output.split("Commands:\n", 1)[1]
    lines = listing.strip("\n").splitlines()
    listed = [line.split()[0] for line in lines]
    expected = [name for name in WORKFLOW + TOOLS if name in main.commands]
    assert listed[: len(expected)] == expected and sorted(listed) == sorted(main.commands)
    for line, name in zip(lines, listed, strict=True):
        first = " ".join(main.commands[name].help.split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        assert len(line) <= 80 and "..." not in line and line.split(None, 1)[1].rstrip(".") == first, line
    table = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    in_table = re.findall(r"^\| `tskd-lite ([a-z-]+)", table, re.M)
    assert in_table == [name for name in listed if name in in_table]


def test_every_bundled_recipe_loads_with_its_files_in_place(tiny, tmp_path):
    """recipes/*.toml name the bundled models and data (made by `just models world`); pointed at stand-ins made
    here, every other key must pass validation as written (served.toml's urls and names too: nothing is contacted
    at load)."""
    (tmp_path / "seeds.txt").write_text("Where does Ada Lin live?\n")
    (tmp_path / "entities.txt").write_text("Ada Lin\nBo Kra\n")
    (tmp_path / "eval.jsonl").write_text('{"prompt": "p", "answer": "a"}\n')
    recipes = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.toml"))
    assert {"demo.toml", "paper.toml", "transfer.toml", "served.toml"} <= {r.name for r in recipes}
    for path in recipes:
        raw = tomllib.loads(path.read_text())
        stand_ins = {
            "teacher": {"model": str(tiny["teacher"]), "lora": None},
            "base": {"model": str(tiny["base"])},
            "seeds": {"file": str(tmp_path / "seeds.txt")},
            "output": {"db": str(tmp_path / f"{path.stem}.db")},
        }
        if "entities_file" in raw.get("expand", {}):
            stand_ins["expand"] = {"entities_file": str(tmp_path / "entities.txt")}
        if "target" in raw:
            stand_ins["target"] = {"model": str(tiny["other"]), "cache": str(tmp_path / "target.hf")}
        if "eval" in raw:
            stand_ins["eval"] = {"file": str(tmp_path / "eval.jsonl")}
        layered = merged(raw, stand_ins)
        layered["teacher"].pop("lora")
        (tmp_path / path.name).write_text("")
        loaded = load_recipe(tmp_path / path.name, layered)
        assert loaded.expand.strategy == raw.get("expand", {}).get("strategy", "fewshot"), path.name
        if path.name == "served.toml":  # both roles served, sharing the local GGUF's vocabulary
            assert loaded.teacher.backend == loaded.base.backend == "vllm"
            assert loaded.teacher.served_model == "teacher" and loaded.base.served_model == "base"
            assert loaded.target is not None and loaded.eval is not None


def test_the_own_models_fragments_load_with_their_files_in_place(tiny, tmp_path):
    """Each [teacher]/[base] of "Your own models", pointed at stand-ins of the kind its backend reads (a GGUF and a
    GGUF LoRA, a Hugging Face folder and a PEFT adapter, a local GGUF beside a server), loads as written."""
    from peft import LoraConfig, get_peft_model
    from tinymodels import write_tiny_lora

    from tskd_lite.hf import load_hf
    from tskd_lite.recipe import Target
    from tskd_lite.target import hf_dir

    folder = hf_dir(Target(model=tiny["base"], cache=tmp_path / "base-hf"), log=lambda _: None)
    _, model = load_hf(folder, dtype="float32", device="cpu")
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    gguf_lora = tmp_path / "adapter.gguf"
    write_tiny_lora(gguf_lora, {"blk.0.attn_q.weight": (64, 64)})
    files = {  # backend: (model, lora)
        "llama_cpp": (tiny["base"], gguf_lora),
        "transformers": (folder, tmp_path / "adapter"),
        "openai": (tiny["base"], None),
    }
    section = README.split("## Your own models", 1)[1].split("\n## ", 1)[0]
    blocks = _toml_blocks(section)
    assert [b["teacher"].get("backend", "llama_cpp") for b in blocks] == ["llama_cpp", "transformers", "openai"]
    for block in blocks:
        raw = {"seeds": {"prompts": ["One?"]}, "output": {"db": str(tmp_path / "x.db")}}
        for role in ("teacher", "base"):
            model, lora = files[block[role].get("backend", "llama_cpp")]
            stand_ins = {"model": str(model)} | ({"lora": str(lora)} if "lora" in block[role] else {})
            raw[role] = block[role] | stand_ins
        (tmp_path / "own.toml").write_text("")
        recipe = load_recipe(tmp_path / "own.toml", raw)
        assert recipe.teacher.backend == recipe.base.backend == block["teacher"].get("backend", "llama_cpp")


def test_every_relative_link_in_the_readme_and_docs_points_at_an_existing_file():
    """Inline markdown links and images, outside code blocks and spans; a link's #anchor is not checked."""
    broken, count = [], 0
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # a URL, a mailto: or an anchor on the same page
            count += 1
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert count >= 10
    assert not broken, broken
