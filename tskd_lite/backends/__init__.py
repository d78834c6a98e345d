"""Model backends behind one protocol (base.py); each module registers its class in BACKENDS on import."""

from tskd_lite.backends import llama_cpp  # noqa: F401 (registers "llama_cpp")
from tskd_lite.backends.base import BACKENDS, Backend, Generation, Scored, backend_class, open_backend

__all__ = ["BACKENDS", "Backend", "Generation", "Scored", "backend_class", "open_backend"]
