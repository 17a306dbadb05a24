"""`WarmRunLauncher`: each chunk run in its own process, forked from one that has already loaded the code location.

Dagster's default run launcher starts every run in a fresh interpreter, which imports dagster, pandas, pyarrow and
httpx and loads every pipeline spec before the first step: about 5 s of CPU per run on a 2-core machine
(bench/pipeline_overhead.py), 20 ms per item for a 250-item chunk, more than the LLM calls of a cheap stage. A
nightly job of 100,000 items is 400 such runs. This launcher keeps what a run is unchanged (one Dagster run per
chunk, one partition, queued by the run queue and its tag limits, its own process, killable on its own) and only
removes the repeated start-up:

- On the first launch for a code location, it starts a *warm parent* (`python -m llm_assets.run_launcher`, with
  the run's Python): a process that loads the code location once (`recon_repository_from_origin(...)
  .get_definition()`) and then waits on a pipe. The parent starts no threads and opens no instance, database or
  socket, so forking it is safe.
- For each run, the launcher asks the parent to fork. The child opens the instance from its ref and executes the
  run exactly as `dagster api execute_run` does (`_execute_run_command_body`: the engine events, the run's
  failure handling, `inject_env_vars`), then exits. Fork costs milliseconds; see docs/benchmarks.md
  "Orchestration overhead".
- The child is a process of its own: a kill -9 of it is a killed run worker like any other (the run-liveness
  sweep fails it, llm_assets/run_liveness.py); the parent and the other runs go on. Children outlive the parent:
  Linux clears the parent-death signal on fork.
- Stale code never runs. The parent records a fingerprint of the code it loaded: the project's own modules (every
  loaded module under the code location's working directory) and the pipeline specs (`$CHUNKWISE_PIPELINES`,
  `$CHUNKWISE_PROFILE`). Before each fork it compares; when anything changed, it exits and the launcher starts a
  new parent, so a run always executes the code a fresh process would load. (A file the code reads at load time
  outside those, such as a team rule file, is not watched: restart the daemon after changing one.)
- When the warm path cannot be used (the run's Python is not this one, the code pointer is not a module or file,
  or the parent fails to start), the run starts cold, as the default launcher would (`dagster api execute_run` in
  a new process), and the run's tags say so (`chunkwise/launch: cold`).

`terminate` (the UI's "Terminate") marks the run canceling and sends the worker SIGINT, which Dagster turns into
a clean cancel (RUN_CANCELED); it can reach workers on this host only, as a local launcher's can. Run worker
health is not reported to run monitoring; a killed worker is found by the run-liveness sweep, as with the default
launcher.

Configure it in `$DAGSTER_HOME/dagster.yaml` (`make demo` does; deploy/dagster.yaml shows it):

    run_launcher:
      module: llm_assets.run_launcher
      class: WarmRunLauncher

It serves one host: the runs execute beside the daemon that launches them. Across machines, Dagster's own
launchers (dagster-docker, dagster-k8s; docs/deployment.md) start a container per run instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.code_pointer import FileCodePointer, ModuleCodePointer, PackageCodePointer
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData
from dagster_shared.serdes import deserialize_value, serialize_value

from llm_assets.run_liveness import HOST_TAG, WORKER_PID_TAG
from resources.local_sqlite import pid_alive

WARM_PARENT_TAG = "chunkwise/warm_parent_pid"
"""The pid of the warm parent a run's worker was forked from (absent for a cold start)."""
LAUNCH_TAG = "chunkwise/launch"
"""`warm` (forked from the warm parent) or `cold` (a fresh `dagster api execute_run` process)."""
READY_TIMEOUT_S = 300.0
"""How long the warm parent may take to load the code location before the run starts cold instead."""
REPLY_TIMEOUT_S = 30.0
"""How long a fork request may take to answer (a fork and a fingerprint check: milliseconds)."""
PRELOAD_MODULES = (
    "anyio._backends._asyncio",
    "certifi",
    "dagster._core.execution.plan.active",
    "dagster._core.executor.in_process",
    "dagster._core.instance.factory",
    "dagster._core.storage.local_compute_log_manager",
    "fsspec.implementations.local",
    "h11",
    "httpcore",
    "pandas.core.methods.to_dict",
    "pyarrow.dataset",
    "upath.implementations.local",
    "watchdog.observers.polling",
)
"""Modules a chunk run imports only once it runs (measured: 127 modules, 0.34 s of CPU per run), imported by the
warm parent so every run inherits them."""
_STALE = "stale"
_PR_SET_PDEATHSIG = 1


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a process forked from a warm parent that has the code location loaded."""

    def __init__(self, inst_data: ConfigurableClassData | None = None):
        self._inst_data = inst_data
        self._lock = threading.Lock()
        self._parents: dict[str, _WarmParent] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]
    ) -> WarmRunLauncher:
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise dg.DagsterInvariantViolationError(
                f"run {run.run_id} has no code origin; it cannot be launched"
            )
        instance_ref = self._instance.get_ref()
        tags = {HOST_TAG: socket.gethostname(), LAUNCH_TAG: "warm"}
        with self._lock:
            forked = self._fork_warm(origin, run.run_id, serialize_value(instance_ref))
            if forked is not None:
                pid, tags[WARM_PARENT_TAG] = forked
            else:
                args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=instance_ref)
                command = [
                    origin.executable_path,
                    "-m",
                    "dagster",
                    "api",
                    "execute_run",
                    serialize_value(args),
                ]
                process = subprocess.Popen(command)
                # reaped as soon as it exits, so its pid stops looking alive to the run-liveness sweep
                threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()
                pid, tags[LAUNCH_TAG] = process.pid, "cold"
                self._instance.report_engine_event(
                    "Started the run cold, in a fresh process: the code location could not be loaded in a warm "
                    "parent for it (the daemon's log says why) or its Python is not the daemon's.",
                    run,
                    cls=self.__class__,
                )
        self._instance.add_run_tags(run.run_id, {**tags, WORKER_PID_TAG: str(pid)})

    def _fork_warm(self, origin: JobPythonOrigin, run_id: str, instance_ref: str) -> tuple[int, str] | None:
        """(the pid of a child forked for the run, its parent's pid), or None when the run must start cold."""
        repository = origin.repository_origin
        if not _warm_capable(repository):
            return None
        key = serialize_value(repository)
        for _attempt in range(2):  # a stale parent exits; the second attempt forks from a fresh one
            parent = self._parents.get(key)
            if parent is None or not parent.alive():
                parent = _WarmParent.start(repository, key)
                if parent is None:
                    return None
                self._parents[key] = parent
            pid = parent.fork(run_id, instance_ref)
            if pid is not None:
                return pid, str(parent.pid)
            parent.stop()
            del self._parents[key]
        return None

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        pid = run.tags.get(WORKER_PID_TAG)
        if pid is None or run.tags.get(HOST_TAG) != socket.gethostname() or not pid_alive(int(pid)):
            return False
        self._instance.report_run_canceling(run)
        os.kill(int(pid), signal.SIGINT)
        return True

    def dispose(self) -> None:
        with self._lock:
            for parent in self._parents.values():
                parent.stop()
            self._parents.clear()


def _warm_capable(repository: RepositoryPythonOrigin) -> bool:
    same_python = os.path.realpath(repository.executable_path) == os.path.realpath(sys.executable)
    loadable = isinstance(repository.code_pointer, ModuleCodePointer | PackageCodePointer | FileCodePointer)
    return same_python and loadable and hasattr(os, "fork")


class _WarmParent:
    """The launcher's handle on one warm parent: a child process speaking JSON lines on its stdin and stdout."""

    def __init__(self, process: subprocess.Popen[bytes]):
        self._process = process

    @classmethod
    def start(cls, repository: RepositoryPythonOrigin, key: str) -> _WarmParent | None:
        process = subprocess.Popen(
            [repository.executable_path, "-m", "llm_assets.run_launcher", key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        parent = cls(process)
        if parent._read_line(READY_TIMEOUT_S) != "ready":
            parent.stop()
            return None
        return parent

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def fork(self, run_id: str, instance_ref: str) -> int | None:
        """The forked child's pid; None when the parent's code is stale or it did not answer."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"run_id": run_id, "instance_ref": instance_ref}).encode() + b"\n")
            stdin.flush()
        except BrokenPipeError:
            return None
        reply = self._read_line(REPLY_TIMEOUT_S)
        return int(reply) if reply and reply.isdigit() else None

    def _read_line(self, timeout_s: float) -> str | None:
        stdout = self._process.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout_s)
        if not readable:
            return None
        return stdout.readline().decode().strip() or None

    def stop(self) -> None:
        if self.alive():
            self._process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):  # it is killed next; nothing is lost either way
            self._process.wait(timeout=10)
        if self.alive():
            self._process.kill()
            self._process.wait()


def project_modules(working_directory: str | None) -> list[Path]:
    """The files of the loaded modules that belong to the project (under its working directory, not a venv)."""
    root = Path(working_directory or os.getcwd()).resolve()
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or ".venv" in Path(path).parts:
            continue
        resolved = Path(path).resolve()
        if resolved.is_relative_to(root):
            files.add(resolved)
    return sorted(files)


def code_fingerprint(modules: list[Path]) -> str:
    """A digest of what a fresh run process would load: the project's modules and the pipeline specs.

    Each file contributes its path, size and modification time; a spec that appeared or a file that vanished
    changes it too.
    """
    from llm_assets.location import PROFILE_ENV, pipelines_dir

    specs = pipelines_dir()
    files = set(modules)
    files.update(specs.rglob("*") if specs.is_dir() else [specs])
    if os.environ.get(PROFILE_ENV):
        files.add(Path(os.environ[PROFILE_ENV]))
    digest = hashlib.sha256()
    for path in sorted(files):
        try:
            stat = path.stat()
        except FileNotFoundError:
            digest.update(f"{path}\0gone\n".encode())
            continue
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _serve(key: str) -> None:
    """The warm parent: load the code location, answer "ready", then fork one child per request."""
    from dagster._utils.hosted_user_process import recon_repository_from_origin

    _die_with_parent()
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(
        sys.stderr.fileno(), sys.stdout.fileno()
    )  # the code's own prints must not reach the protocol pipe
    repository = deserialize_value(key, RepositoryPythonOrigin)
    recon_repository_from_origin(repository).get_definition()
    _warm_up()
    modules = project_modules(getattr(repository.code_pointer, "working_directory", None))
    loaded = code_fingerprint(modules)
    signal.signal(signal.SIGCHLD, _reap_children)
    protocol.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        if code_fingerprint(modules) != loaded:
            protocol.write(f"{_STALE}\n")
            return
        pid = os.fork()
        if pid == 0:
            protocol.close()
            _run_child(request["run_id"], request["instance_ref"])
        protocol.write(f"{pid}\n")


def _warm_up() -> None:
    """Import what runs import late, build the LLM client's TLS context, parse Dagster's migration scripts
    (llm_assets/schema_check_cache.py), and freeze the objects loaded so far out
    of the garbage collector's reach: a collection in a child would otherwise write to (and so copy) every page
    of them (the Python docs' advice for fork servers, `gc.freeze`)."""
    from llm_assets import schema_check_cache
    from resources.llm.runner import tls_context

    for name in PRELOAD_MODULES:
        importlib.import_module(name)
    tls_context()
    schema_check_cache.preload()
    if threading.active_count() != 1:
        print(
            f"chunkwise warm parent: {threading.active_count()} threads after loading the code location; forking "
            "a process with threads is unsafe, so runs may hang: report this",
            file=sys.stderr,
            flush=True,
        )
    gc.freeze()


def _reap_children(_signum: int, _frame: Any) -> None:
    """Collect every finished run worker and log its exit code and CPU time to the daemon's log (waiting, rather
    than letting the kernel discard them, also keeps their CPU time in the daemon's accounting: bench/overhead.py
    reads it)."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                return
            print(
                f"chunkwise warm parent: run worker {pid} exited ({os.waitstatus_to_exitcode(status)}) after "
                f"{usage.ru_utime + usage.ru_stime:.2f} s of CPU ({usage.ru_stime:.2f} s in the kernel, "
                f"{usage.ru_minflt} page faults)",
                file=sys.stderr,
                flush=True,
            )


def _run_child(run_id: str, instance_ref: str) -> None:
    """Execute one run in this forked process, as `dagster api execute_run` does, then exit."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._core.instance.ref import InstanceRef
    from dagster._utils.interrupts import capture_interrupts

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)  # the request pipe is the parent's, not the run's
        os.dup2(devnull, 0)
        os.close(devnull)
        with capture_interrupts(), _instance(deserialize_value(instance_ref, InstanceRef)) as instance:
            code = _execute_run_command_body(
                run_id, instance, lambda _event: None, set_exit_code_on_failure=False
            )
    except (
        BaseException
    ):  # the run's own failures are in its event log; this is a failure to execute it at all
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@contextlib.contextmanager
def _instance(ref: Any) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.from_ref(ref) as instance:
        yield instance


def _die_with_parent() -> None:
    """Linux: the warm parent gets SIGTERM when the process that started it (the daemon) dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


if __name__ == "__main__":
    _serve(sys.argv[1])
