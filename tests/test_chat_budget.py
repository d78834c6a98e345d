"""The render budget of chat templates: a template that loops, repeats or doubles its way to minutes or gigabytes is
refused with one line naming the role, in-process at every render and, at load, by a check in a forked child."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tskd_lite import chat, gguf_meta
from tskd_lite.errors import TskdError

NESTED_BIG_RANGES = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
# 10^12 iterations: never done within the budget on any machine (10^8 took 4.4 s on one, inside 5 s)
NESTED_LOOPS = (
    "{% for i in range(10000) %}{% for j in range(10000) %}{% for k in range(10000) %}"
    "{% endfor %}{% endfor %}{% endfor %}done"
)
DOUBLING_TILDE = (
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}"
)
DOUBLING_PLUS = (
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# ChatML with a default system turn, written with the operators the budget intercepts (+, *, range).
CHATML_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>' + 'system\\n' + 'You are helpful.' + '<|im_end|>\\n' }}"
    "{% endif %}{% for i in range(messages | length) %}{% set m = messages[i] %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' * 1 }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{{ '-' * 3 }}{{ 2 ** 10 }}{% endif %}{{ eos_token }}"
)


class _Hung(BaseException):
    """The test's own alarm: on code without a time budget, a hanging render fails the test instead of the run."""


@contextlib.contextmanager
def hang_guard(seconds: float):
    def on_alarm(signum, frame):
        raise _Hung(f"still rendering after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield on_alarm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def address_space_cap(extra: int):
    """Cap this process's address space a little above its size: code that builds gigabytes fails fast instead."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space() + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _children() -> list[tuple[int, str]]:
    """(pid, state) of this process's children, zombies included."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == os.getpid():
                found.append((int(entry.name), fields[0]))
    return found


def render(source: str, role: str = "teacher", user_text: str = "Is this a test?") -> str:
    return chat.render_user_turn(chat.compile_template(source, Path("unused.gguf"), role), role, user_text)


def assert_budget_error(error: pytest.ExceptionInfo, role: str, reason: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{role}.chat_template: the template went over its render budget ("), message
    assert reason in message, message


def test_a_range_over_the_cap_is_refused_at_once():
    started = time.monotonic()
    with hang_guard(20), pytest.raises(TskdError) as error:
        render(NESTED_BIG_RANGES)
    assert_budget_error(error, "teacher", "range over 10000 items")
    assert time.monotonic() - started < 2


def test_nested_loops_stop_at_the_time_budget():
    started = time.monotonic()
    with hang_guard(20), pytest.raises(TskdError) as error:
        render(NESTED_LOOPS, role="generator")
    elapsed = time.monotonic() - started
    assert_budget_error(error, "generator", f"more than {chat.RENDER_SECONDS:g} s")
    assert chat.RENDER_SECONDS <= elapsed < chat.RENDER_SECONDS + 3


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ 'x' * 4000000000 }}", "repetition over 1000000 items"),
        ("{{ 4000000000 * 'x' }}", "repetition over 1000000 items"),
        ("{{ ([0] * 4000000000) | length }}", "repetition over 1000000 items"),
        ("{{ (2 ** 100000000) > 1 }}", "number over 1000000 digits"),
        (DOUBLING_PLUS, "concatenation over 1000000 items"),
    ],
)
def test_a_huge_repetition_is_refused_before_it_is_built(source, reason):
    # Under a cap 256 MiB above this process's size: building the result first would fail on memory instead.
    started = time.monotonic()
    with hang_guard(20), address_space_cap(256 * 2**20), pytest.raises(TskdError) as error:
        render(source)
    assert_budget_error(error, "teacher", reason)
    assert time.monotonic() - started < 2


def test_output_over_the_budget_is_refused():
    with pytest.raises(TskdError) as error:
        render("{% for i in range(10000) %}{{ 'x' * 200 }}{% endfor %}")
    assert_budget_error(error, "teacher", "output over 1000000 characters")
    # Just under the budget is fine.
    assert len(render("{% for i in range(5000) %}{{ 'x' * 200 }}{% endfor %}")) == 1_000_000


def _rendered_before(source: str, user_text: str, bos: str, eos: str) -> str:
    """What tskd-lite rendered before the budget: the plain sandbox, same options."""
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    messages = [{"role": "user", "content": user_text}]
    return template.render(messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos)


@pytest.mark.parametrize("which", ["tiny", "llama3", "chatml-system"])
def test_normal_templates_render_as_before(tiny, which):
    if which == "tiny":
        source = gguf_meta.chat_template(tiny["teacher"])
        template = chat.compile_template(None, tiny["teacher"], "teacher")
    else:
        source = {"llama3": LLAMA3, "chatml-system": CHATML_SYSTEM}[which]
        template = chat.compile_template(source, tiny["teacher"], "teacher")
    for text in ["Is this a test?", "  Name three primary colours.\n", "\x00user-turn\x00", ""]:
        got = chat.render_user_turn(template, "teacher", text, "<s>", "</s>")
        assert got == _rendered_before(source, text, "<s>", "</s>")
        assert text.strip() in got


def test_the_previous_sigalrm_handler_and_timer_are_restored(monkeypatch):
    def previous(signum, frame):
        raise AssertionError("the previous timer fired during the test")

    monkeypatch.setattr(chat, "RENDER_SECONDS", 0.3)
    old = signal.signal(signal.SIGALRM, previous)
    try:
        signal.setitimer(signal.ITIMER_REAL, 100)
        assert render("{{ messages[0]['content'] }}") == "Is this a test?"
        assert signal.getsignal(signal.SIGALRM) is previous
        assert 99 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100
        with pytest.raises(TskdError) as error:
            render(NESTED_LOOPS)
        assert_budget_error(error, "teacher", "more than 0.3 s")
        assert signal.getsignal(signal.SIGALRM) is previous
        assert 98 < signal.getitimer(signal.ITIMER_REAL)[0] < 99.8
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    # With no timer before, none is left after.
    render("{{ messages[0]['content'] }}")
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is old


def test_a_render_off_the_main_thread_keeps_the_size_caps():
    results = {}

    def work():
        results["ok"] = render("{{ messages[0]['content'] }}")
        try:
            render(NESTED_BIG_RANGES)
        except TskdError as e:
            results["refused"] = str(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(20)
    assert results["ok"] == "Is this a test?"
    assert "range over 10000 items" in results["refused"]


def test_the_forked_check_refuses_doubling_without_growing_this_process():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    for template in [DOUBLING_TILDE, chat.compile_template(DOUBLING_TILDE, Path("unused.gguf"), "teacher")]:
        with hang_guard(30), pytest.raises(TskdError) as error:
            chat.check_template(template, "teacher")
        assert_budget_error(error, "teacher", "memory over 512 MiB")
    assert time.monotonic() - started < 15
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024
    assert not _children()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% for m in messages %}", "not a valid Jinja template"),
        ("{{ messages[3]['content'] }}", "failed while rendering"),
        ("{{ raise_exception('no system role') }}", "chat template raised: no system role"),
        (NESTED_BIG_RANGES, "render budget (a range over 10000 items)"),
        ("{{ 'x' | center(4000000000) }}", "render budget (memory over 512 MiB)"),
    ],
)
def test_the_forked_check_reports_what_rendering_would(source, message):
    with pytest.raises(TskdError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        chat.check_template(source, "teacher")
    assert "\n" not in str(error.value)
    assert not _children()


def test_the_forked_check_passes_good_templates_many_times_without_leaks(tiny):
    template = chat.compile_template(None, tiny["teacher"], "teacher")
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(25):  # speed is the benchmark's business; what this counts is leaks
        chat.check_template(template, "teacher")
        chat.check_template(LLAMA3, "base", user_text="hello")
    assert len(os.listdir("/proc/self/fd")) == fds
    assert not _children()


def test_the_forked_check_stops_a_child_by_its_clock_or_kills_it(monkeypatch):
    monkeypatch.setattr(chat, "RENDER_SECONDS", 0.3)
    with hang_guard(20), pytest.raises(TskdError) as error:
        chat.check_template(NESTED_LOOPS, "teacher")
    assert_budget_error(error, "teacher", "more than 0.3 s")
    # A child whose own clock does not stop it (here: none) is killed by the parent, and reaped.
    monkeypatch.setattr(chat, "RENDER_SECONDS", 0)
    monkeypatch.setattr(chat, "CHECK_SECONDS", 0.5)
    started = time.monotonic()
    with hang_guard(20), pytest.raises(TskdError) as error:
        chat.check_template(NESTED_LOOPS, "teacher")
    assert_budget_error(error, "teacher", "more than 0.5 s")
    assert time.monotonic() - started < 3
    assert not _children()
