"""Chat templates: the recipe's override or the model's own, compiled the way Hugging Face renders them.

The sandbox stops a template from escaping; the budgets here stop it from costing too much. Every render (the one at
load and each of the run's) is guarded in-process, cheaply: ranges, ``*``/``**``/``+`` results, the output and the
wall-clock time are capped. What those guards cannot see coming (a string doubled by ``~`` until memory is gone, a
filter asked for a four-gigabyte padding) is caught at load by check_template, which renders once in a forked child
with its address space capped.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jinja2 import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tskd_lite import gguf_meta
from tskd_lite.errors import TskdError

# The render budget. Read at call time, so a test may lower them.
RENDER_SECONDS = 5.0  # wall-clock time of one render (main thread only; see _time_budget)
MAX_RENDER_CHARS = 1_000_000  # the rendered text, and any one string, list or number a `*`, `**` or `+` would build
MAX_RANGE = 10_000  # items of one range() (jinja2's own cap, MAX_RANGE, is 100,000)
# check_template's child: its address space may grow this much past the parent's, and it is killed after this long.
CHECK_MEMORY_BYTES = 512 * 1024 * 1024
CHECK_SECONDS = RENDER_SECONDS + 5.0

_SEQUENCES = (str, bytes, list, tuple)
_BITS_PER_DIGIT = math.log2(10)


class _OverBudget(TskdError):
    """A guard refused the template's next step; render_user_turn names the role in front of the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the template went over its render budget ({reason})")
        self.reason = reason


class _RenderTimeout(BaseException):
    """Raised by the SIGALRM handler. A BaseException, so that no `except Exception` inside jinja2 swallows it."""


def _capped_range(*args: int) -> range:
    rng = range(*args)
    try:
        too_long = len(rng) > MAX_RANGE
    except OverflowError:  # longer than sys.maxsize
        too_long = True
    if too_long:
        raise _OverBudget(f"a range over {MAX_RANGE} items")
    return rng


def _int_too_big(bits: float) -> bool:
    return bits > MAX_RENDER_CHARS * _BITS_PER_DIGIT


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, a result of `*`, `**` or `+` bigger than the budget."""
    limit = MAX_RENDER_CHARS
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(times, int) and len(seq) * times > limit:
                raise _OverBudget(f"a repetition over {limit} items")
        if isinstance(left, int) and isinstance(right, int) and _int_too_big(left.bit_length() + right.bit_length()):
            raise _OverBudget(f"a number over {limit} digits")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            # |left| >= 2, so right alone bounds the bits from below (and keeps the float product finite)
            if _int_too_big(right) or _int_too_big(right * math.log2(abs(left))):
                raise _OverBudget(f"a number over {limit} digits")
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES) and len(left) + len(right) > limit:
            raise _OverBudget(f"a concatenation over {limit} items")


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox Hugging Face renders with, plus a lower range cap and size checks on `*`, `**` and `+`.

    jinja2 compiles an intercepted operator to environment.call_binop(...) and never folds it at compile time."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.globals["range"] = _capped_range  # the sandbox puts its own safe_range there

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return self.binop_table[operator](left, right)


@contextlib.contextmanager
def _time_budget(seconds: float) -> Iterator[None]:
    """Raise _RenderTimeout in the guarded block once `seconds` have passed, by SIGALRM.

    Signal handlers can only be set on the main thread: elsewhere the block runs without a clock (the range,
    operator and output caps still hold). The previous handler and timer are always put back; a previous timer keeps
    its deadline (it fires at once if that passed during the block, at the latest `seconds` late)."""
    if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_handler = signal.getsignal(signal.SIGALRM)
    if previous_handler is None:  # a handler set outside Python: it could not be put back, so no clock
        yield
        return
    armed = [True]

    def on_alarm(signum: int, frame: Any) -> None:
        if armed[0]:
            raise _RenderTimeout

    started = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    previous_timer = (0.0, 0.0)
    try:
        previous_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        # Nested, so that an alarm landing in the first lines still lets the handler and the old timer be restored.
        try:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous_handler)
            delay, interval = previous_timer
            if delay > 0:
                signal.setitimer(signal.ITIMER_REAL, max(delay - (time.monotonic() - started), 1e-6), interval)


def _render(template: Template, context: dict[str, Any]) -> str:
    """template.render(context), piece by piece, stopping once the text is over MAX_RENDER_CHARS."""
    limit = MAX_RENDER_CHARS
    parts: list[str] = []
    size = 0
    pieces = template.generate(context)
    try:
        for piece in pieces:
            size += len(piece)
            if size > limit:
                raise _OverBudget(f"output over {limit} characters")
            parts.append(piece)
    finally:
        pieces.close()
    return "".join(parts)


def _raise_exception(message: str) -> None:
    raise TskdError(f"chat template raised: {message}")


def template_source(override: str | None, model: Path | None, role: str) -> str:
    """The recipe's template, else the model's own (a GGUF's metadata, a Hugging Face folder's tokenizer files); a
    one-line error where neither exists."""
    if not override and model is None:  # a served model with no local GGUF beside it
        raise TskdError(f"{role}.chat_template: required for a served model without a local GGUF in {role}.model")
    if override:
        return override
    template = folder_template(model) if model.is_dir() else gguf_meta.chat_template(model)
    if template is None:
        place = "tokenizer files" if model.is_dir() else "GGUF metadata"
        raise TskdError(
            f"{role}.model: {model} has no chat template in its {place}; set {role}.chat_template in the recipe"
        )
    return template


def folder_template(folder: Path) -> str | None:
    """A Hugging Face folder's chat template, where transformers keeps it: chat_template.jinja (written by
    save_pretrained since transformers 4.43), else tokenizer_config.json's chat_template, a text or a list of named
    templates (the one named "default" is the chat's)."""
    import json

    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    try:
        value = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) and value else None


def user_prefix(render: Callable[[str], str], role: str) -> str:
    """A model's chat template up to where the user's words begin (render: the backend's user-turn render): what
    the model continues to write a user turn of its own (Magpie, Xu et al. 2025), ending where it closes the turn."""
    mark = "\x00user-turn\x00"
    full = render(mark)
    if mark not in full:
        raise TskdError(f"{role}.chat_template: the template does not show the user's text as given")
    return full[: full.index(mark)]


def _compile(source: str, role: str, out_of_memory: str = "out of memory") -> Template:
    env = _BudgetedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except MemoryError:
        raise TskdError(f"{role}.chat_template: the template went over its render budget ({out_of_memory})") from None
    except Exception as e:  # jinja2 raises TemplateSyntaxError and friends
        raise TskdError(f"{role}.chat_template: not a valid Jinja template ({e})") from None


def compile_template(override: str | None, model: Path | None, role: str) -> Template:
    """The recipe's template, else the model's own (template_source); a one-line error where neither exists."""
    return _compile(template_source(override, model, role), role)


def render_user_turn(template: Template, role: str, user_text: str, bos: str = "", eos: str = "") -> str:
    """One user turn rendered, ready for the reply; a template that fails while rendering (an index it lacks, a
    filter it misuses) or goes over its render budget gives one line naming the role instead of a traceback mid-run."""
    return _render_turn(template, role, user_text, bos, eos)


def _render_turn(
    template: Template, role: str, user_text: str, bos: str = "", eos: str = "", out_of_memory: str = "out of memory"
) -> str:
    context = {
        "messages": [{"role": "user", "content": user_text}],
        "add_generation_prompt": True,
        "bos_token": bos,
        "eos_token": eos,
    }
    budget = f"{role}.chat_template: the template went over its render budget"
    try:
        with _time_budget(RENDER_SECONDS):
            return _render(template, context)
    except _RenderTimeout:
        raise TskdError(f"{budget} (more than {RENDER_SECONDS:g} s)") from None
    except _OverBudget as e:
        raise TskdError(f"{budget} ({e.reason})") from None
    except MemoryError:
        raise TskdError(f"{budget} ({out_of_memory})") from None
    except TskdError:
        raise
    except Exception as e:  # jinja2 raises UndefinedError, TypeError and friends from inside the template
        raise TskdError(
            f"{role}.chat_template: the template failed while rendering ({type(e).__name__}: {e})"
        ) from None


# The forked check ------------------------------------------------------------------------------------------------


def _address_space() -> int | None:
    """This process's address-space size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _cap_address_space(limit: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _readable(fd: int, seconds: float) -> bool:
    """Whether fd has data (or its end of file) within `seconds`; poll, as select refuses descriptors over 1023."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(1, math.ceil(seconds * 1000))))
    return bool(select.select([fd], [], [], seconds)[0])


def _child_check(template: str | Template, role: str, user_text: str, limit: int | None, out: int) -> None:
    """In the forked child: compile and render once, write b"ok\\n" or b"err <one line>\\n" to `out`."""
    memory = f"memory over {CHECK_MEMORY_BYTES // 2**20} MiB"
    # Made before the cap, so that reporting a MemoryError that escaped the render needs no memory.
    out_of_memory = f"err {role}.chat_template: the template went over its render budget ({memory})\n".encode()
    try:
        if limit is not None:
            with contextlib.suppress(ValueError, OSError):  # a cap refused: the clock still holds
                _cap_address_space(limit)
        compiled = _compile(template, role, memory) if isinstance(template, str) else template
        _render_turn(compiled, role, user_text, out_of_memory=memory)
        reply = b"ok\n"
    except MemoryError:
        reply = out_of_memory
    except TskdError as e:
        reply = ("err " + " ".join(str(e).split("\n"))[:4000] + "\n").encode()
    view = memoryview(reply)
    while view:
        view = view[os.write(out, view) :]


def check_template(template: str | Template, role: str, user_text: str = "Is this a test?") -> None:
    """Compile (given source) and render one user turn in a forked child whose address space may grow
    CHECK_MEMORY_BYTES past this process's and which is killed after CHECK_SECONDS: None when it renders, else the
    one-line TskdError compile_template or render_user_turn would give, or one naming the budget it went over.

    Pass the source rather than a compiled Template where you can: jinja2 folds constant expressions while it
    compiles (`{{ 'x' | center(4000000000) }}` is built then), and source is compiled in the child."""
    if not hasattr(os, "fork"):  # no fork (Windows): the in-process guards only
        compiled = _compile(template, role) if isinstance(template, str) else template
        render_user_turn(compiled, role, user_text)
        return
    size = _address_space()
    limit = None if size is None else size + CHECK_MEMORY_BYTES
    seconds = CHECK_SECONDS
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise
    if pid == 0:  # the child: whatever happens, it ends here, by os._exit (no atexit, no buffers flushed)
        status = 1
        try:
            os.close(read_end)
            _child_check(template, role, user_text, limit, write_end)
            status = 0
        except BaseException:
            pass
        finally:
            os._exit(status)
    os.close(write_end)
    reply = b""
    timed_out = False
    reaped = False
    try:
        deadline = time.monotonic() + seconds
        while b"\n" not in reply:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if _readable(read_end, left):
                data = os.read(read_end, 65536)
                if not data:  # the child is gone without a word
                    break
                reply += data
        if timed_out:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, wait_status = os.waitpid(pid, 0)
        reaped = True
    finally:
        os.close(read_end)
        if not reaped:  # interrupted (Ctrl-C) while waiting: no child left running, none left a zombie
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    budget = f"{role}.chat_template: the template went over its render budget"
    if timed_out:
        raise TskdError(f"{budget} (more than {seconds:g} s)")
    line = reply.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if line == "ok":
        return
    if line.startswith("err "):
        raise TskdError(line[4:])
    # Silent death: most likely memory ran out where Python could not raise MemoryError (a C library aborting).
    if os.WIFSIGNALED(wait_status):
        how = f"killed by signal {os.WTERMSIG(wait_status)}"
    else:
        how = f"exit status {os.waitstatus_to_exitcode(wait_status)}"
    raise TskdError(f"{budget} (its check process died: {how}; memory over {CHECK_MEMORY_BYTES // 2**20} MiB?)")
