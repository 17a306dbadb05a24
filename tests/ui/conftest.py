"""What the browser test (test_dagster_ui.py) stands on: a small demo instance, `make ui` serving it on a free port,
and Chromium from Debian driven by Playwright, with a screenshot of every step.

`demo_ui` runs `python -m scripts.demo` on 300 shuffled BANKING77 rows in chunks of 100 (3 partitions) into a fresh
`$CHUNKWISE_HOME`, then `python -m scripts.ui --port <free>` (the simulator and `dagster dev`: webserver, daemon,
code server) on that instance, and waits until the code location has loaded. Everything it started is stopped at
the end (one process group). `page` is a Chromium page (tests/ui/install_chromium.sh installs the browser; nothing
is downloaded by Playwright). `screens` writes `<n>-<step>.png` into `<tmp_path>/screenshots` after every step,
and on a failure names that folder in the error.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BANKING = ROOT / "data" / "banking77" / "test.csv"
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking switches Chromium keeps calling Google services the closed network refuses.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# What the demo and `make ui` read: removed so each starts its own simulator on the test's instance.
DEMO_ENV = (
    "CHUNKWISE_LLM_BASE_URL", "CHUNKWISE_LLM_API_KEY", "CHUNKWISE_ANTHROPIC_BASE_URL", "CHUNKWISE_ANTHROPIC_API_KEY",
    "DAGSTER_HOME", "CHUNKWISE_MODE", "CHUNKWISE_OUTPUTS_URI", "CHUNKWISE_PIPELINES",
)  # fmt: skip
SAMPLE_ROWS = 300
CHUNK_SIZE = 100
UI_START_TIMEOUT_S = 300.0  # dagster dev on a busy 2-core machine: webserver, daemon and code server
DATASET_LINE = re.compile(r"^pipeline banking77: dataset (\S+): ([\d,]+) items in (\d+) chunks")


@dataclass
class DemoUI:
    """`make ui` serving a demo instance: its URL, home, log, and the dataset the demo registered."""

    base_url: str
    home: Path
    log: Path
    dataset_id: str
    n_chunks: int
    demo_run_ids: list[str]
    _http: httpx.Client = field(repr=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """The webserver's GraphQL answer's `data`; raises with the errors if there are any."""
        response = self._http.post(self.url("/graphql"), json={"query": query, "variables": variables or {}})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_sample(path: Path, n: int, seed: int = 13) -> None:
    """n BANKING77 rows, shuffled with `seed`, in the columns the banking77 spec reads (`text,category`)."""
    with BANKING.open(newline="") as f:
        rows = random.Random(seed).sample(list(csv.DictReader(f)), n)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows(rows)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DEMO_ENV}
    return {**env, "CHUNKWISE_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def _demo_run_ids(home: Path) -> list[str]:
    """Every run in the instance under `home` (read before the UI and its daemon launch anything)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return [record.dagster_run.run_id for record in instance.get_run_records()]


def _build_demo_instance(home: Path, data: Path, log: Path) -> tuple[str, int]:
    """`make demo` on `data` into `home`; returns the dataset id and its number of chunks."""
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "scripts.demo", "--data", str(data), "--chunk-size", str(CHUNK_SIZE)],
            cwd=ROOT, env=_env(home), stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False,
        )  # fmt: skip
    output = log.read_text(errors="replace")
    assert done.returncode == 0, f"the demo failed (exit {done.returncode}):\n{output[-4000:]}"
    for line in output.splitlines():
        if match := DATASET_LINE.match(line):
            return match.group(1), int(match.group(3))
    raise AssertionError(f"the demo did not name its dataset:\n{output[-4000:]}")


def _wait_until_loaded(ui: subprocess.Popen, demo: DemoUI) -> None:
    """Until the webserver answers and the code location has loaded (raise with the log if it fails to)."""
    query = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
    deadline = time.monotonic() + UI_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ui.poll() is not None:
            raise AssertionError(f"`make ui` exited with {ui.returncode}:\n{demo.log_tail()}")
        with contextlib.suppress(httpx.TransportError, httpx.HTTPStatusError, AssertionError, KeyError):
            entries = demo.graphql(query)["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
                assert not errors, f"the code location did not load: {errors}"
                return
        time.sleep(1.0)
    raise AssertionError(f"the UI was not up within {UI_START_TIMEOUT_S:.0f}s:\n{demo.log_tail()}")


def _default_sigint() -> None:
    """Ctrl-C back to its default in `make ui`'s process: started from a background shell (as CI may run
    pytest) it inherits SIGINT ignored, and dagster dev, which maps SIGTERM to SIGINT's handler, then ignores
    both."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_group(proc: subprocess.Popen) -> None:
    """Ctrl-C to everything `make ui` started (its own process group), as a person stops it; then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):  # whatever is left in the group (code server, run workers)
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def demo_ui(tmp_path: Path) -> Iterator[DemoUI]:
    home = tmp_path / "home"
    data = tmp_path / "banking77-ui.csv"
    _write_sample(data, SAMPLE_ROWS)
    dataset_id, n_chunks = _build_demo_instance(home, data, tmp_path / "demo.log")
    run_ids = _demo_run_ids(home)
    port = _free_port()
    log = tmp_path / "make-ui.log"
    env = {**_env(home), "CHUNKWISE_SIM_PORT": str(_free_port())}
    with log.open("wb") as out:
        ui = subprocess.Popen(
            [sys.executable, "-m", "scripts.ui", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_default_sigint,
        )  # fmt: skip
    http = httpx.Client(timeout=30.0)
    demo = DemoUI(f"http://127.0.0.1:{port}", home, log, dataset_id, n_chunks, run_ids, http)
    try:
        _wait_until_loaded(ui, demo)
        yield demo
    finally:
        http.close()
        _stop_group(ui)


class Screens:
    """A screenshot after every step into one folder; a failing step's error names the folder and the log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.page: Any = None
        self.log: Path | None = None
        self.console: list[str] = []

    @contextlib.contextmanager
    def step(self, number: int, name: str) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:  # pytest.xfail too: its screenshot shows what the step saw
            shot = self.shot(f"{number}-{name}-stopped")
            exc.add_note(
                f"step {number} ({name}) did not pass; screenshots of every step: {self.folder} (this one: {shot}); "
                f"`make ui` log: {self.log}; browser console errors: {self.console[-10:]}"
            )
            raise
        self.shot(f"{number}-{name}")

    def shot(self, stem: str) -> Path | None:
        """A full-page screenshot `<stem>.png` in the folder (None, with a line on stdout, if the page is gone)."""
        path = self.folder / f"{stem}.png"
        try:
            self.page.screenshot(path=str(path), full_page=True)
        except Exception as exc:  # a dead page: say so instead of hiding the step's own error
            print(f"screenshot {path} failed: {exc}")
            return None
        return path


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    """A Chromium page (1600x1000) from the Debian package, through Playwright; no browser download."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/ui/install_chromium.sh` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # The UI's "Join the Dagster community" dialog (once per browser, on localhost) would cover every
            # page; this is what its Skip button stores.
            context.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
            yield context.new_page()
        finally:
            browser.close()


@pytest.fixture
def screens(tmp_path: Path, page: Any, demo_ui: DemoUI) -> Screens:
    folder = tmp_path / "screenshots"
    folder.mkdir()
    print(f"screenshots: {folder}")  # pytest shows it with the failure
    recorder = Screens(folder)
    recorder.page = page
    recorder.log = demo_ui.log
    page.on("console", lambda m: recorder.console.append(m.text) if m.type == "error" else None)
    return recorder
