"""`make demo`: register a dataset, run every chunk of every stage the way production does, print the report.

`make demo` runs the BANKING77 pipeline (pipelines/banking77.yaml) on its shipped test split (3,080 items);
`make demo PIPELINE=pipelines/reviews.yaml` runs another spec on its `input.demo_data`; `DATA=` another file,
`CHUNK=` another chunk size, `MODE=batch` every stage through the providers' Batch APIs at half price,
`PROFILE=` a file of spec overrides (e.g. a local llama.cpp server). Unless `CHUNKWISE_LLM_BASE_URL` is set or a
profile is given, the local simulator is started here as a separate process (the product and the simulator meet
only over HTTP) and the variables the shipped specs read (`CHUNKWISE_LLM_BASE_URL`, `CHUNKWISE_ANTHROPIC_BASE_URL`
and their keys) point at it. State lives under `$CHUNKWISE_HOME` (default `./.chunkwise`): the Dagster instance
in `dagster/`, outputs, dead letters, reports.

The spec and the file are checked here first (bad input: one line that says what to fix, exit 2, nothing
launched). Then `dagster-daemon` runs everything (scripts/demo_daemon.py): the pipeline's new-dataset sensor picks
up the file from its inbox, the run queue runs the chunks several at once, each in its own process, the batch
poll, backfill and completion sensors do the rest, and every run shows in `make ui` with the sensor that launched
it. One line per finished run; the last line printed is the path of the completion report.
`--in-process` instead runs each chunk in this process, one after another, with no daemon (a debugger's view;
the chaos harness, bench/chaos.py, kills that process tree at seeded points).

Running it again processes nothing new and spends nothing: finished chunks are not re-run. After a stop
(SIGTERM / Ctrl-C: exit 130; a job-fatal failure such as a bad key or a spent budget: exit 3) running it again
goes on where it stopped, re-paying at most the requests that were in flight.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PIPELINE = ROOT / "pipelines" / "banking77.yaml"
SIM_CONFIG = ROOT / "scripts" / "demo_sim.yaml"
SIM_KEY = "sk-sim-local"
DEMO_ACCURACY = {"gpt-6-luna": 0.75, "gpt-6.2-sol": 0.92}
"""Each simulated model's share of right labels on items in the demo's answer key: the cheap classifier and the
strong enricher/judge (docs/simulator-answer-key.md). The sampled_quality threshold of pipelines/banking77.yaml is
measured against these (bench/quality_baseline.py)."""
# The console shows the pipeline's own INFO lines (progress, check results), not Dagster's DEBUG event stream;
# every event is still in the instance for `make ui`.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# Failures Chunkwise expects and explains (bad key, budget, outage, a failed gate): their message says what to
# do, so the console leaves out the stack trace (it stays in the run's event log for `make ui`).
EXPECTED_FAILURES = (
    "JobFatalError",
    "ChunkRetryableError",
    "DagsterAssetCheckFailedError",
    "BudgetExhausted",
)


class _TrimExpectedTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "Stack Trace:" in message and any(name in message for name in EXPECTED_FAILURES):
            record.msg = (
                message.split("\n\nStack Trace:", 1)[0].rstrip()
                + "  (stack trace: the run's logs in `make ui`)"
            )
            record.args = ()
        return True


def demo_console_logger():
    """Dagster's console logger for the demo: INFO and up, expected failures without their stack trace."""
    import dagster as dg

    @dg.logger(
        config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
        description="The demo's console: INFO and up; expected failures without a stack trace.",
    )
    def console(init_context: dg.InitLoggerContext) -> logging.Logger:
        logger = logging.Logger("chunkwise", level=init_context.logger_config["log_level"])
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
        handler.addFilter(_TrimExpectedTracebacks())
        logger.addHandler(handler)
        return logger

    return console


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(config: Path | None = SIM_CONFIG) -> tuple[subprocess.Popen, str]:
    """Start `python -m llm_sim serve` on a free port; return the process and its root URL.

    `config=None` runs the simulator's defaults (no latency, no faults, no limits)."""
    port = _free_port()
    # The simulator writes here for its whole life; read only if it dies at start-up (a pipe nobody reads fills up).
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llm_sim",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *(["--config", str(config)] if config else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        cwd=ROOT,
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr.seek(0)
            raise SystemExit(f"the simulator exited at start-up:\n{stderr.read().decode(errors='replace')}")
        try:
            if httpx.get(f"{root}/_sim/stats", timeout=1).status_code == 200:
                return proc, root
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the simulator did not answer within 30 s")


def demo_sim_config(pipeline: Path, folder: Path, changes: dict[str, Any] | None = None) -> Path:
    """The simulator config the demo runs for the spec `pipeline`, written to `folder`: scripts/demo_sim.yaml,
    with top-level keys replaced by `changes` (e.g. `{"seed": 3, "latency": {}}`), and, when the spec reads one
    text column and a gold label column from a local CSV `input.demo_data` (BANKING77), an answer key built from
    that file (`folder/answer_key.json`) with `DEMO_ACCURACY` per model, so the models differ in quality as real
    ones do. Other specs (the reviews pipeline joins two text columns) run without a key, with the lexical
    answers. Only this harness and the simulator read the key; the product learns gold labels from its own
    data. A spec that does not load gets no key (the demo reports the spec's problem itself)."""
    import yaml

    from llm_assets.spec import PipelineSpecError, load_pipeline
    from llm_sim.answer_key import key_from_csv, write_key

    config = yaml.safe_load(SIM_CONFIG.read_text()) | (changes or {})
    try:
        spec = load_pipeline(pipeline, require_secrets=False)
    except PipelineSpecError:
        spec = None
    columns = spec.input.columns if spec is not None else None
    data = Path(spec.input.demo_data) if spec is not None and spec.input.demo_data else None
    folder.mkdir(parents=True, exist_ok=True)
    if columns is not None and len(columns.text) == 1 and columns.label and data and data.suffix == ".csv":
        key = folder / "answer_key.json"
        write_key(key_from_csv(data, columns.text[0], columns.label), key)
        config["answer_key"] = str(key.resolve())
        models = config.setdefault("models", {})
        for model, accuracy in DEMO_ACCURACY.items():
            models[model] = {**models.get(model, {}), "accuracy": accuracy}
    path = folder / "sim.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def prepare_instance(home: Path) -> None:
    from scripts.demo_daemon import write_instance_config

    dagster_home = home / "dagster"
    write_instance_config(dagster_home)  # queued runs, run monitoring; rewritten at every start
    os.environ["DAGSTER_HOME"] = str(dagster_home)


class _OneLineParser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr and exit code 2, like every other bad input (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"chunkwise: {message}; see `python -m scripts.demo --help`\n")


def _chunk_size(value: str) -> int:
    from llm_assets.datasets import MIN_CHUNK_SIZE  # the rule registration enforces

    try:
        size = int(value)
    except ValueError:
        size = None
    if size is None or size < MIN_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of rows, {MIN_CHUNK_SIZE} or more (100-500 suits most runs), got {value!r}"
        )
    return size


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pipeline",
        default=str(DEFAULT_PIPELINE),
        help="the pipeline spec (YAML) to run; docs/pipeline-spec.md",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="CSV/Parquet/JSONL file, local or s3:// (default: the spec's input.demo_data)",
    )
    parser.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=None,
        help="rows per chunk (one partition each; default: the spec's input.chunk_size); 100-500 suits most runs",
    )
    parser.add_argument(
        "--mode",
        default=None,
        choices=["online", "batch"],
        help="every stage online (request by request) or batch (the providers' Batch APIs: half price, collected "
        "later); default: each stage's `mode` in the spec",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="a YAML file of spec overrides merged into the pipeline (e.g. pipelines/profiles/llamacpp-banking77.yaml "
        "points every stage at a local llama.cpp server); with a profile the simulator is not started",
    )
    parser.add_argument(
        "--batch-timeout-s", type=float, default=1800.0, help="batch mode: give up waiting after this long"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run each chunk in this process, one after another, without the daemon and its run queue",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=3600.0,
        help="through the daemon: stop waiting for the report after this long (run the demo again to go on)",
    )
    return _main(parser.parse_args(argv))


def point_at_simulator(root: str) -> None:
    """The variables the shipped specs' provider profiles read, set to the simulator at `root` (the keys only
    when unset)."""
    os.environ["CHUNKWISE_LLM_BASE_URL"] = f"{root}/v1"
    os.environ["CHUNKWISE_ANTHROPIC_BASE_URL"] = root
    os.environ.setdefault("CHUNKWISE_LLM_API_KEY", SIM_KEY)
    os.environ.setdefault("CHUNKWISE_ANTHROPIC_API_KEY", SIM_KEY)


def _main(args: argparse.Namespace) -> int:

    from llm_assets.settings import chunkwise_home

    home = chunkwise_home()
    prepare_instance(home)
    sim = None
    sim_root = None
    if os.environ.get("CHUNKWISE_LLM_BASE_URL") and not os.environ.get("CHUNKWISE_LLM_API_KEY"):
        print(
            f"chunkwise: CHUNKWISE_LLM_BASE_URL is {os.environ['CHUNKWISE_LLM_BASE_URL']} but CHUNKWISE_LLM_API_KEY "
            "is not set; export the provider's key as CHUNKWISE_LLM_API_KEY and run again",
            file=sys.stderr,
        )
        return 2
    if not os.environ.get("CHUNKWISE_LLM_BASE_URL") and not args.profile:
        sim, sim_root = start_simulator(demo_sim_config(Path(args.pipeline), home / "demo" / "simulator"))
        point_at_simulator(sim_root)
        print(f"simulator (a local test double, not a real model) at {sim_root}")
    try:
        return _run(args, home, sim_root)
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(timeout=10)


def _load_spec(args: argparse.Namespace):
    """The chosen spec with `--profile`'s overrides, every stage in `--mode` when given, and the overrides
    themselves; (None, {}) after one line per problem if either is bad."""
    from llm_assets.spec import PipelineSpecError, load_pipeline
    from llm_assets.spec_load import apply_overrides, read_profile

    try:
        overrides = read_profile(Path(args.profile)) if args.profile else {}
        spec = load_pipeline(args.pipeline, overrides=overrides or None)
        if args.mode:
            modes = {"stages": {stage.name: {"mode": args.mode} for stage in spec.stages}}
            overrides = apply_overrides(overrides, modes)
            spec = load_pipeline(args.pipeline, overrides=overrides)
        return spec, overrides
    except PipelineSpecError as exc:
        for line in str(exc).splitlines():
            print(f"chunkwise: {line}", file=sys.stderr)
        return None, {}


def _run(args: argparse.Namespace, home: Path, sim_root: str | None) -> int:
    # Imported late: the spec reads the provider settings from the environment set above.
    import dagster as dg

    from llm_assets.chunk_status import ChunkState, chunk_states
    from llm_assets.datasets import DatasetError, register_dataset
    from llm_assets.location import s3_for
    from llm_assets.pipeline_assets import chunks_partitions_name, dataset_spec, spec_layout
    from llm_assets.run_liveness import fail_orphaned_runs
    from llm_assets.spec_load import apply_overrides
    from sensors.chunk_runs import layout_providers
    from sensors.halts import clear_provider, retry_now

    spec, overrides = _load_spec(args)
    if spec is None:
        return 2
    data = args.data or spec.input.demo_data
    if not data:
        print(
            f"chunkwise: {args.pipeline} has no input.demo_data; give a file with `make demo PIPELINE=... DATA=...`",
            file=sys.stderr,
        )
        return 2
    layout = spec_layout(spec)
    s3 = s3_for(data, specs=[spec])  # None unless the input or the outputs are on S3
    instance = dg.DagsterInstance.get()
    orphaned = fail_orphaned_runs(instance)
    if orphaned:
        print(
            f"marked {len(orphaned)} unfinished runs failed: their process was killed (chunks resume from checkpoints)"
        )
    # Running the demo again by hand is a person's decision to go on after a job-fatal stop (key, quota, model):
    # the halts are lifted now, and the backfill sensor re-runs the chunks the stop held.
    for provider in layout_providers(layout):
        for reason in clear_provider(instance, provider):
            print(
                f"lifted the earlier stop ({reason}); if its cause is not fixed the first request stops again"
            )
    try:  # through the daemon the partitions are added by the new-dataset sensor, as in production
        dataset = register_dataset(
            dataset_spec(spec, data, args.chunk_size),
            instance,
            home,
            s3=s3,
            partitions_name=chunks_partitions_name(spec),
            add_partitions=args.in_process,
        )
    except DatasetError as exc:  # bad input: one line that says what to fix, no traceback, nothing sent
        print(f"chunkwise: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    print(
        f"pipeline {spec.name}: dataset {dataset.dataset_id}: {dataset.total_rows:,} items in {dataset.n_chunks} "
        f"chunks of {dataset.chunk_size}"
    )
    report_path = home / "reports" / dataset.dataset_id / "completion_report.json"
    states = chunk_states(instance, dataset.partition_keys, layout)
    todo = [k for k in dataset.partition_keys if not states[k].state.terminal]
    waiting = [k for k in todo if states[k].state == ChunkState.RETRY_PENDING]
    if waiting and not args.in_process:  # going on now is the person's decision, as with a stop above
        retry_now(instance, spec.name)
        print(
            f"{len(waiting)} chunks failed (retryable) earlier: the backfill sensor re-runs them now, not after backoff"
        )
    completed = report_path.exists() and dataset.dataset_id in instance.get_materialized_partitions(
        layout.completion_key
    )
    batch = any(stage.mode == "batch" for stage in spec.stages)
    if not todo and completed:
        print("every chunk is already done: nothing to send, nothing spent")
    elif args.in_process:
        code = _run_in_process(args, spec, layout, dataset, todo, home, instance, s3, batch)
        if code is not None:
            return code
    else:
        from scripts.demo_daemon import run_through_daemon

        if args.chunk_size:
            overrides = apply_overrides(overrides, {"input": {"chunk_size": args.chunk_size}})
        inbox = home / "inbox" / spec.name
        overrides = apply_overrides(overrides, {"input": {"watch": str(inbox.resolve())}})
        code = run_through_daemon(
            dataset=dataset,
            layout=layout,
            data=data,
            spec_path=Path(args.pipeline),
            overrides=overrides,
            home=home,
            instance=instance,
            s3=s3,
            batch=batch,
            timeout_s=args.timeout_s,
        )
        if code is not None:
            return code
    report = json.loads(report_path.read_text())
    _print_summary(report, sim_root)
    print(report_path)
    return 0 if report["threshold_met"] else 1


def _run_in_process(args, spec, layout, dataset, todo, home: Path, instance, s3, batch: bool) -> int | None:
    """`--in-process`: each chunk in this process, one after another, then the completion run. Returns the
    exit code when it stops early, None once the report is written."""
    import dagster as dg

    from llm_assets.failure_class import FailureClass, job_fatal_reason, run_failure_class
    from llm_assets.location import build_defs
    from llm_assets.run_liveness import process_tags
    from sensors.chunk_runs import chunk_run_request, layout_providers

    defs = dg.Definitions.merge(
        build_defs([spec], home=home, s3=s3, outputs_uri=os.environ.get("CHUNKWISE_OUTPUTS_URI") or None),
        dg.Definitions(loggers={"console": demo_console_logger()}),
    )
    # The same job and run tags the sensors use, so the UI, the backfill sensor and the report agree.
    job = defs.resolve_job_def(layout.chunk_job)
    provider = layout_providers(layout)[0]
    stop = _StopOnSignal()
    for n, key in enumerate(todo, start=1):
        if stop.signal is not None:
            print(
                f"chunkwise: stopped by {stop.signal}: {len(todo) - n + 1} chunks not started; run `make demo` again "
                "to resume (work already done is kept and not paid again)",
                file=sys.stderr,
            )
            return 130
        started = time.monotonic()
        request = chunk_run_request(key, attempt=1, provider=provider, launched_by="demo")
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            raise_on_error=False,
            tags={**request.tags, **process_tags()},  # a kill leaves a run the next start marks failed
            run_config=QUIET,
        )
        cost = _materialized_cost(result)
        status = "ok" if result.success else "FAILED (see the run in `make ui`)"
        if result.success and batch and not cost:
            status = "batch submitted"
        print(
            f"[{n}/{len(todo)}] {key}: {status} in {time.monotonic() - started:.1f}s, ${cost:.4f}", flush=True
        )
        if not result.success and run_failure_class(instance, result.run_id) == FailureClass.JOB_FATAL:
            # Bad key, no quota, unknown model, spent budget: every further chunk would fail the same way.
            reason, message = job_fatal_reason(instance, result.run_id)
            message = re.sub(r"^[\w.]+Error: ", "", " ".join(message.split()))
            print(f"chunkwise: stopped ({reason}): {message}", file=sys.stderr, flush=True)
            print(
                f"{len(todo) - n} chunks not started. Fix the cause and run `make demo` again: "
                "work already done is kept and not paid again."
            )
            return 3
    if batch and todo:
        collect_batches(defs, instance, home, dataset.partition_keys, args.batch_timeout_s, layout)

    report_path = home / "reports" / dataset.dataset_id / "completion_report.json"
    completed = dataset.dataset_id in instance.get_materialized_partitions(layout.completion_key)
    if (
        todo or not completed or not report_path.exists()
    ):  # a kill in the completion step leaves it unrecorded
        instance.add_dynamic_partitions(layout.datasets_partitions, [dataset.dataset_id])
        completion = defs.resolve_job_def(layout.completion_job).execute_in_process(
            instance=instance,
            partition_key=dataset.dataset_id,
            raise_on_error=False,
            run_config=QUIET,
            tags=process_tags(),
        )
        if not completion.success:
            print("the completion report could not be written: some chunk is not done (see `make ui`)")
            return 1
    return None


def _materialized_cost(result) -> float:
    """USD the run's materializations recorded (stage metadata `cost_usd`)."""
    return sum(
        float(e.event_specific_data.materialization.metadata["cost_usd"].value)
        for e in result.get_asset_materialization_events()
        if "cost_usd" in e.event_specific_data.materialization.metadata
    )


class _StopOnSignal:
    """SIGTERM / Ctrl-C: finish the chunk in progress (its LLM calls stop sending at once, in-flight replies are
    checkpointed), launch no further chunk; a second signal exits at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signal is not None:
            raise SystemExit(130)
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: stopping after the chunk in progress (again to exit at once)", file=sys.stderr)


def collect_batches(defs, instance, home: Path, partition_keys: list[str], timeout_s: float, layout) -> None:
    """Stand in for the daemon: evaluate batch_poll_sensor's logic every second and launch the runs it requests
    (each run key once, as Dagster does) until every chunk is terminal or `timeout_s` passes."""
    import dagster as dg

    from llm_assets.chunk_status import chunk_states
    from llm_assets.run_liveness import process_tags
    from sensors.batches import evaluate_batches, find_pending_batches

    job = defs.resolve_job_def(layout.chunk_job)
    launched: set[str] = set()
    cursor: str | None = None
    deadline = time.monotonic() + timeout_s
    wanted = {key: defs.resources[key] for key in layout.llm_keys}
    with dg.build_resources(wanted) as resources:  # resolves the EnvVar API key as a run does
        llms = {key: getattr(resources, key) for key in layout.llm_keys}
        while time.monotonic() < deadline:
            states = chunk_states(instance, partition_keys, layout)
            if all(s.state.terminal for s in states.values()):
                return
            if not find_pending_batches(home, [layout]):
                print("no batches at the provider and some chunks are not done (see `make ui`)")
                return
            requests, _, cursor, summary = evaluate_batches(instance, home, llms, cursor, [layout])
            fresh = [r for r in requests if r.run_key not in launched]
            if not fresh:
                time.sleep(1.0)
                continue
            print(f"batch_poll_sensor: {summary}", flush=True)
            for request in fresh:
                launched.add(request.run_key)
                started = time.monotonic()
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=request.partition_key,
                    asset_selection=request.asset_selection,
                    tags={**request.tags, "dagster/run_key": request.run_key, **process_tags()},
                    raise_on_error=False,
                    run_config=QUIET,
                )
                stage = request.tags.get("chunkwise/batch_stage", "?")
                status = "collected" if result.success else "FAILED (see the run in `make ui`)"
                print(
                    f"  {request.partition_key} {stage}: {status} in {time.monotonic() - started:.1f}s, "
                    f"${_materialized_cost(result):.4f} materialized",
                    flush=True,
                )
    print(f"gave up waiting for batches after {timeout_s:.0f}s; the batch poll sensor picks them up later")


def _print_summary(r: dict, sim_root: str | None) -> None:
    from llm_assets.report import PricedAtZero

    sampled = r["checks"]["sampled_accuracy"]
    acc = "n/a" if sampled["accuracy"] is None else f"{sampled['accuracy']:.3f} (n={sampled['scored']})"
    print()
    print(
        f"{r['succeeded']:,} of {r['total_items']:,} items succeeded, {r['failed']:,} failed "
        f"({r['dead_lettered']:,} dead-lettered, {r['quarantined']:,} quarantined, "
        f"{r['not_processed']:,} not processed); threshold {r['success_threshold']:.0%} "
        f"{'met' if r['threshold_met'] else 'NOT met'}"
    )
    b = r["buckets"]
    print(
        f"  rows: {b['succeeded']:,} succeeded + {b['dead_lettered']:,} dead-lettered + {b['quarantined']:,} "
        f"quarantined + {b['not_processed']:,} not processed = {sum(b.values()):,}"
    )
    for label, field in (
        ("dead-lettered", "dead_lettered_by_reason"),
        ("quarantined", "quarantined_by_gate"),
        ("not processed", "not_processed_by_reason"),
    ):
        if r[field]:
            print(f"    {label}: {', '.join(f'{k} {v:,}' for k, v in r[field].items())}")
    print(
        f"  cost: ${r['total_cost_usd']:.4f} billed = ${r['useful_cost_usd']:.4f} useful + ${r['repaid_usd']:.4f} "
        f"re-paid + ${r['wasted_usd']:.4f} wasted + ${r['quality_checks_usd']:.4f} quality checks "
        f"(${r['cost_per_item_usd']:.6f} per item), cache savings ${r['cache_savings_usd']:.4f}"
    )
    if r["unsettled_requests"]:
        print(
            f"  unsettled: {r['unsettled_requests']:,} requests were in flight when a process died; the provider "
            f"may have billed up to ${r['unsettled_max_usd']:.4f} more"
        )
    print(
        f"  tokens: {r['input_tokens']:,} in ({r['cached_input_tokens']:,} cached), {r['output_tokens']:,} out"
    )
    print(f"  cost by stage: {json.dumps({k: round(v, 4) for k, v in r['cost_by_stage'].items()})}")
    print(f"  cost by mode:  {json.dumps({k: round(v, 4) for k, v in r.get('cost_by_mode', {}).items()})}")
    print(f"  cost by team:  {json.dumps({k: round(v, 4) for k, v in r['cost_by_team'].items()})}")
    print(f"  retries: {r['retried']}; wall clock: {r['wall_clock_s']:.1f}s")
    print(f"  sampled accuracy vs gold labels: {acc}")
    if r["failed_items_uri"]:  # None when nothing was dead-lettered: no folder to point at
        print(f"  failed items: {r['failed_items_uri']}")
    for zero in r.get("priced_at_zero", []):  # the report's own sentence, without its Markdown
        print(f"  priced at $0: {PricedAtZero(**zero).describe().replace('`', '')}")
    if sim_root:
        billed = httpx.get(f"{sim_root}/_sim/stats", timeout=5).json().get("billed_usd")
        print(f"  simulator ledger billed this process: ${billed:.4f}")


if __name__ == "__main__":
    sys.exit(main())
