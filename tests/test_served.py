"""The served backend (backend = "openai") against real llama-cpp-python servers on the tiny models: the same
log-probs, replies and kept pool as in-process, and one-line errors for what a server can do wrong."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import recipe_dict, write_recipe

from tskd_lite import pipeline
from tskd_lite.backends import open_backend
from tskd_lite.backends import openai as served
from tskd_lite.errors import TskdError
from tskd_lite.recipe import ModelSpec, load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/servers.py: the server processes
from bench.servers import ServerProcess, free_port  # noqa: E402

pytest.importorskip("uvicorn", reason="llama-cpp-python's server extras (the dev extra) are not installed")

N_CTX = 512
PAIRS = [
    ("What is the boiling point of water?", "It boils at 100 degrees."),
    ("Name three primary colours.", "Red, blue and yellow"),
    ("Translate 'good morning'.", "Bonjour, ça va? ü"),  # characters split across byte-level tokens
    ("x", "y"),
]


class Server:
    """`python -m llama_cpp.server` on one GGUF (bench/servers.py: a free port, stopped by its pid)."""

    def __init__(self, model: Path, name: str) -> None:
        self.name, self.port = name, free_port()
        args = ["--model", str(model), "--model_alias", name, "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--n_ctx", str(N_CTX), "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "false"]
        self.process = ServerProcess(
            [sys.executable, "-m", "llama_cpp.server", *args], self.port, f"llama_cpp.server for {model}", timeout=60
        )
        self.url = self.process.url

    def spec(self, model: Path | None = None, **kw) -> ModelSpec:
        return ModelSpec(model=model, backend="openai", url=self.url, served_model=self.name, n_ctx=N_CTX, **kw)

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def servers(tiny):
    started: dict[str, Server] = {}
    try:
        for role in ("teacher", "base"):
            started[role] = Server(tiny[role], role)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(served, "BACKOFF", 0.05)


def _local(path: Path):
    return open_backend(ModelSpec(model=path, n_ctx=N_CTX), role="teacher", threads=1, parallel=4)


def test_log_probs_equal_the_in_process_backend(tiny, servers):
    local, remote = _local(tiny["teacher"]), open_backend(servers["teacher"].spec(tiny["teacher"]), role="teacher")
    try:
        pairs = [(local.render(q), a) for q, a in PAIRS]
        assert [remote.render(q) for q, _ in PAIRS] == [p for p, _ in pairs]
        want, got = local.score_answers(pairs, byte_ends=True), remote.score_answers(pairs, byte_ends=True)
        diffs = []
        for w, g in zip(want, got, strict=True):
            assert len(g.logprobs) == len(w.logprobs) and g.n_tokens == w.n_tokens and g.byte_ends == w.byte_ends
            diffs.append(float(np.abs(g.logprobs - w.logprobs).max()))
        print(f"max |log p served - log p in-process| per pair: {diffs}")
        assert max(diffs) < 1e-4
        for rendered, answer in pairs:
            assert remote.count_prompt_tokens(rendered) == local.count_prompt_tokens(rendered)
            assert remote.count_answer_tokens(answer) == local.count_answer_tokens(answer)
    finally:
        local.close()
        remote.close()


def test_replies_equal_the_in_process_backend(tiny, servers):
    local, remote = _local(tiny["teacher"]), open_backend(servers["teacher"].spec(tiny["teacher"]), role="teacher")
    try:
        prompts = [local.render(q) for q, _ in PAIRS]
        seeds = list(range(len(prompts)))
        for temperature, top_p in ((0.0, 1.0), (0.8, 0.95)):
            kw = {"max_tokens": 20, "temperature": temperature, "top_p": top_p, "seeds": seeds}
            assert remote.generate(prompts, **kw) == local.generate(prompts, **kw)
    finally:
        local.close()
        remote.close()


def test_a_template_without_a_leading_bos_is_refused_for_shifted_log_probs(tiny, servers):
    # llama-cpp-python's issue #1983: echoed log-probs are read one position late unless the prompt starts with BOS
    spec = servers["teacher"].spec(chat_template="User: {{ messages[0]['content'] }}\nAssistant:")
    remote = open_backend(spec, role="teacher")
    try:
        with pytest.raises(TskdError, match="shifted by one token") as e:
            remote.score_answers([(remote.render("Hi"), "Hello there")])
        assert "\n" not in str(e.value) and servers["teacher"].url in str(e.value)
    finally:
        remote.close()


def test_an_unknown_model_name_is_refused_naming_url_and_model(servers):
    spec = ModelSpec(backend="openai", url=servers["teacher"].url, served_model="nope", chat_template="{{ 1 }}")
    with pytest.raises(TskdError, match="no model of that name") as e:
        open_backend(spec, role="teacher")
    line = str(e.value)
    assert "\n" not in line and servers["teacher"].url in line and "'nope'" in line and "'teacher'" in line


def test_a_stopped_server_is_one_line(quick_retries):
    url = f"http://127.0.0.1:{free_port()}"
    spec = ModelSpec(backend="openai", url=url, served_model="teacher", chat_template="{{ 1 }}")
    with pytest.raises(TskdError, match="server is not answering") as e:
        open_backend(spec, role="base")
    assert "\n" not in str(e.value) and url in str(e.value) and str(e.value).startswith("base: ")


def test_a_server_killed_mid_run_is_one_line(tiny, quick_retries):
    server = Server(tiny["base"], "base")
    try:
        remote = open_backend(server.spec(tiny["base"]), role="base")
        pairs = [(remote.render(q), a) for q, a in PAIRS]
        assert len(remote.score_answers(pairs)) == len(pairs)
        server.stop()
        with pytest.raises(TskdError, match="stopped answering mid-run") as e:
            remote.score_answers(pairs)
        assert "\n" not in str(e.value) and server.url in str(e.value)
        remote.close()
    finally:
        server.stop()


def test_recipe_keys_are_checked_per_backend(tiny, tmp_path):
    def load(role_table):
        raw = recipe_dict(tiny, tmp_path / "r.db")
        raw["base"] = role_table
        return load_recipe(write_recipe(tmp_path / "r.toml", raw))

    with pytest.raises(TskdError, match=r"base\.url: only served backends take it"):
        load({"model": tiny["base"], "url": "http://127.0.0.1:1"})
    with pytest.raises(TskdError, match=r"base\.url: required"):
        load({"backend": "openai", "served_model": "base", "chat_template": "{{ 1 }}"})
    with pytest.raises(TskdError, match=r"base\.served_model: required"):
        load({"backend": "openai", "url": "http://127.0.0.1:1", "chat_template": "{{ 1 }}"})
    with pytest.raises(TskdError, match=r"base\.chat_template: required"):
        load({"backend": "openai", "url": "http://127.0.0.1:1", "served_model": "base"})
    with pytest.raises(TskdError, match=r"base\.url: expected"):
        load({"backend": "openai", "url": "ftp://x", "served_model": "base", "chat_template": "{{ 1 }}"})
    recipe = load({"backend": "openai", "url": "http://127.0.0.1:1/v1", "served_model": "base", "model": tiny["base"]})
    assert recipe.base.served_model == "base" and recipe.base.timeout == 600.0


def _pool(db: Path) -> dict:
    con = sqlite3.connect(db)
    q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
    out = {
        "prompts": q("select round, idx, text, status from prompts order by round, idx"),
        "answers": q(
            "select p.round, p.idx, p.text, a.text, a.n_tokens, a.finish_reason, s.gap from answers a "
            "join prompts p on p.id = a.prompt_id left join scores s on s.prompt_id = a.prompt_id order by 1, 2"
        ),
        "kept": q("select p.round, p.idx, s.kept from selections s join prompts p on p.id = s.prompt_id order by 1, 2"),
        "unit": q("select unit from runs"),
    }
    con.close()
    return out


def test_a_run_with_teacher_and_base_served_keeps_the_in_process_pool(tiny, servers, tmp_path):
    def run(name, served_roles):
        raw = recipe_dict(tiny, tmp_path / f"{name}.db")
        raw["expand"]["rounds"] = 2
        for role in served_roles:
            raw[role] |= {"backend": "openai", "url": servers[role].url, "served_model": role}
        recipe = load_recipe(write_recipe(tmp_path / f"{name}.toml", raw))
        pipeline.run(recipe, progress=False, log=lambda _: None)
        return _pool(recipe.output.db), recipe.output.export_path.read_text()

    local_pool, local_export = run("local", [])
    served_pool, served_export = run("served", ["teacher", "base"])
    assert served_pool["unit"] == local_pool["unit"] == [("token",)]
    assert served_export == local_export and served_export
    assert served_pool["kept"] == local_pool["kept"]
    # Equal, except that a reply llama-cpp-python ran past max_tokens (finishing what looked like a character) and
    # that held a BOS-id token (which its offsets leave out) is kept whole: it runs on by a few characters (and a
    # prompt that ran on gets another answer).
    run_on = 0
    for s, w in zip(served_pool["prompts"], local_pool["prompts"], strict=True):
        assert s[:2] == w[:2] and s[3] == w[3] and s[2].startswith(w[2])
        run_on += s[2] != w[2]
    same = 0
    for s, w in zip(served_pool["answers"], local_pool["answers"], strict=True):
        if s[2] == w[2]:
            assert s[4:6] == w[4:6] and s[3].startswith(w[3])
            if s[3] == w[3] and s[6] is not None:
                assert abs(s[6] - w[6]) < 1e-4
                same += 1
    print(f"prompts run on: {run_on} of {len(local_pool['prompts'])}; pairs with equal text and gap: {same}")
    assert same >= len(local_pool["answers"]) // 2
    con = sqlite3.connect(tmp_path / "served.db")
    models = json.loads(con.execute("select models from runs").fetchone()[0])
    con.close()
    assert json.loads(models["teacher.served_model"])["reported"]["id"] == "teacher"
    assert "base.model" in models  # the local GGUF beside the served name is part of what the run is made of


def test_token_texts_place_the_answer_where_a_server_prints_parts_of_characters_as_replacement_characters():
    # vLLM decodes each echoed token alone: a byte-level token holding half of "ç" prints as U+FFFD, so its offsets
    # count "ç" twice; the answer is spelled back from the end of the text instead (SmolLM2's tokens here)
    answer = "Bonjour, ça va? ü"
    head = ["<|im_start|>", "assistant", "\n"]
    tokens = [*head, "Bon", "jour", ",", " \ufffd", "\ufffd", "a", " va", "?", " \ufffd", "\ufffd", "<|im_end|>"]
    sent = "".join(head) + answer
    assert served._sent_entries(tokens, 1, "", 13) == 13  # every token has an entry: the generated one is the last
    assert served._spell_back(sent, tokens, 13, answer) == (3, [3, 7, 8, 10, 11, 12, 15, 16, 18, 19])
    assert served._spell_back("x\n東京", ["x", "\n", "\ufffd", "\ufffd\ufffd", "\ufffd"], 5, "東京") == (2, [2, 5, 6])
    assert served._spell_back("x\n\ufffdok", ["x", "\n", "\ufffd", "ok"], 4, "\ufffdok") == (2, [3, 5])  # literal
    assert served._spell_back("xy", ["xy"], 1, "y") is None  # the answer's first token starts in the prompt
    assert served._spell_back("x\nabc", ["x", "\n", "abd"], 3, "abc") is None  # not the answer's text
    assert served._spell_back("x\nab", ["x", "\n", "a\ufffd"], 3, "ab") is None  # U+FFFD for an ASCII byte
    assert served._sent_entries(["a", "b"], 1, "", 2) == 2  # llama-cpp-python left out a generated BOS-id token
    # six generated for max_tokens=1 (a character finished first), one of them BOS-id and left out: seen with seed 3
    assert served._sent_entries(["<s>", "x", "^", "k", "Q", "t", "", ""], 6, "kQt", 3) == 3
    assert served._sent_entries(["x", "^", "kQ", "t"], 2, "kQt", 3) == 2  # the prompt's BOS left out instead
