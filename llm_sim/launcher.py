"""Start the simulator as a separate process and talk to its control endpoints: for tests, benchmarks and the demo.

The product never imports this (it reaches a provider over HTTP only); tools that need a running simulator do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SIM_API_KEY = "sk-sim-local"
SIM_START_TIMEOUT_S = 20.0
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SimHandle:
    """A running simulator process. `base_url` is the server root (Anthropic SDK); OpenAI SDKs want
    `openai_base_url` (root + /v1)."""

    def __init__(self, process: subprocess.Popen, base_url: str, workdir: Path, api_key: str):
        self.process = process
        self.base_url = base_url
        self.api_key = api_key
        self.workdir = workdir
        self._http = httpx.Client(base_url=base_url, timeout=10.0)

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, Any]:
        return self._get("/_sim/stats")

    def requests(self) -> list[dict[str, Any]]:
        return self._get("/_sim/requests")

    def bodies(self) -> list[dict[str, Any]]:
        """Chat request bodies as the server received them (needs config `server: {record_bodies: true}`)."""
        return self._get("/_sim/bodies")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        response = self._http.post("/_sim/faults", json=faults)
        response.raise_for_status()
        return response.json()

    def reset(self, faults: bool = False) -> None:
        self._http.post("/_sim/reset", json={"faults": faults}).raise_for_status()

    def server_log(self) -> str:
        """What the server wrote to stderr so far (for failure messages)."""
        path = self.workdir / "stderr.log"
        return path.read_text() if path.exists() else ""

    def _get(self, path: str) -> Any:
        response = self._http.get(path)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self._http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def launch_sim(config: dict[str, Any] | None = None, port: int = 0) -> SimHandle:
    """Start `python -m llm_sim serve` on a free port and wait until it answers; raise with its stderr if not."""
    workdir = Path(tempfile.mkdtemp(prefix="llm_sim_"))
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config or {}))
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llm_sim",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--config",
                str(config_path),
            ],
            stdout=out,
            stderr=err,
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + SIM_START_TIMEOUT_S
    base_url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llm_sim exited with code {process.returncode}:\n{stderr_path.read_text()}")
        if base_url is None:
            for line in stdout_path.read_text().splitlines():
                if line.startswith("llm_sim listening on "):
                    base_url = line.split()[-1]
        if base_url is not None:
            try:
                if httpx.get(base_url + "/_sim/stats", timeout=1.0).status_code == 200:
                    keys = (config or {}).get("keys") or [SIM_API_KEY]
                    return SimHandle(process, base_url, workdir, keys[0] if isinstance(keys, list) else keys)
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=5)
    raise RuntimeError(
        f"llm_sim did not start within {SIM_START_TIMEOUT_S:.0f} s:\n{stderr_path.read_text()}"
    )
