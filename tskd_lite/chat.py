"""Chat templates: the recipe's override or the model's own, compiled the way Hugging Face renders them."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tskd_lite import gguf_meta
from tskd_lite.errors import TskdError


def _raise_exception(message: str) -> None:
    raise TskdError(f"chat template raised: {message}")


def compile_template(override: str | None, model: Path, role: str) -> Template:
    """The recipe's template, else the one in the GGUF metadata; a one-line error where neither exists."""
    template = override or gguf_meta.chat_template(model)
    if template is None:
        raise TskdError(
            f"{role}.model: {model} has no chat template in its GGUF metadata; set {role}.chat_template in the recipe"
        )
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(template)
    except Exception as e:  # jinja2 raises TemplateSyntaxError and friends
        raise TskdError(f"{role}.chat_template: not a valid Jinja template ({e})") from None


def render_user_turn(template: Template, role: str, user_text: str, bos: str = "", eos: str = "") -> str:
    """One user turn rendered, ready for the reply; a template that fails while rendering (an index it lacks, a
    filter it misuses) gives one line naming the role instead of a traceback mid-run."""
    try:
        return template.render(
            messages=[{"role": "user", "content": user_text}], add_generation_prompt=True, bos_token=bos, eos_token=eos
        )
    except TskdError:
        raise
    except Exception as e:  # jinja2 raises UndefinedError, TypeError and friends from inside the template
        raise TskdError(
            f"{role}.chat_template: the template failed while rendering ({type(e).__name__}: {e})"
        ) from None
