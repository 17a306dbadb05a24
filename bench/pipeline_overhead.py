"""Per-partition orchestration overhead and the wall-time cost of item checkpoints (not a test).

Against a zero-latency simulator, BANKING77 chunks go through the BANKING77 pipeline spec (pipelines/banking77.yaml:
banking77/items -> classified -> enriched, with their quality gates) in six variants, interleaved chunk by chunk
so machine noise hits them alike:
- `inprocess_ckpt_on`:  `banking77__chunk_job.execute_in_process`, checkpoints on (the default);
- `inprocess_ckpt_off`: the same, checkpoints off (the `settings` resource's `checkpointing: false`, as run
  config: the spec has no field for it);
- `inprocess_no_checks`: the same without the quality-gate steps, to show what the checks cost;
- `fresh_process_ckpt_on`: `dagster job execute -m llm_assets.definitions -j banking77__chunk_job` in a new
  process per partition, as a deployed run worker pays it: interpreter start, imports, loading every spec of
  pipelines/ (the code location), instance, run, exit;
- `multiprocess_ckpt_on`: the job on the multiprocess executor (a process per step), to show why the chunk
  job uses the in-process executor.
- `fresh_process_empty_job`: bench/empty_location.py's one-asset job the same way: the floor under any
  fresh-process Dagster run of a code location importing dagster, pandas, pyarrow and httpx.
For each partition run: wall time, the time the LLM resource spent in calls (the stages' `duration_s`
metadata), and the rest, which is the fixed cost: Dagster + IO + checks + checkpoints (+ process start for the
fresh-process variant). Prints a table, writes the section between `<!-- pipeline:start -->` and
`<!-- pipeline:end -->` of docs/benchmarks.md (unless `--no-write`), and prints a JSON line.

The first round of chunks warms every variant up (imports, caches, SQLite files) and is not counted.

Usage: python bench/pipeline_overhead.py [--chunks 8] [--no-write]
       (`--chunks 1 --no-write`: a quick check that every variant runs)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dagster as dg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.banking77 import banking77_data, banking77_spec, simulator  # noqa: E402
from bench.docs import replace_section  # noqa: E402
from llm_assets.layout import PipelineLayout  # noqa: E402
from llm_assets.location import build_defs  # noqa: E402
from llm_assets.pipeline_assets import register, spec_layout  # noqa: E402

VARIANTS = (
    "inprocess_ckpt_on",
    "inprocess_ckpt_off",
    "inprocess_no_checks",
    "fresh_process_ckpt_on",
    "fresh_process_empty_job",
    "multiprocess_ckpt_on",
)


def _defs_for(home: str) -> dg.Definitions:
    """The shipped BANKING77 spec as it is (its route and modes), as the code location builds it."""
    return build_defs([banking77_spec()], home=Path(home), sensors=[])


def _checkpoints_off(home: Path) -> dict[str, Any]:
    """Run config turning item checkpoints off; it replaces the `settings` resource's whole config, so it
    repeats the home the code location gave it."""
    return {"resources": {"settings": {"config": {"home": str(home), "checkpointing": False}}}}


def multiprocess_job() -> dg.JobDefinition:
    """Reconstructable entry point for the multiprocess variant (reads its home from the environment; the
    spec's provider variables are inherited)."""
    job = _defs_for(os.environ["BENCH_HOME"]).resolve_job_def(spec_layout(banking77_spec()).chunk_job)
    return job.with_executor_def(dg.multiprocess_executor)


def _llm_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    total = 0.0
    for record in instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records:
        meta = record.event_log_entry.dagster_event.event_specific_data.materialization.metadata
        if "duration_s" in meta:
            total += float(meta["duration_s"].value)
    return total


def _no_checks_job(defs: dg.Definitions, layout: PipelineLayout) -> dg.JobDefinition:
    keys = [layout.key("items"), *(layout.key(stage) for stage in layout.stages)]
    job = dg.define_asset_job(
        f"{layout.chunk_job}_no_checks",
        selection=dg.AssetSelection.assets(*keys).without_checks(),
        executor_def=dg.in_process_executor,
    )
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def(job.name)


def _fresh_process_run(home: Path, job_name: str, key: str | None) -> None:
    """One partition run in a new process, configured from the environment like a deployed code location: it
    loads every spec in pipelines/, whose provider variables `simulator()` set (`key=None`:
    bench/empty_location.py's trivial job instead, the floor)."""
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster"), "CHUNKWISE_HOME": str(home)}
    dagster_cli = Path(sys.executable).with_name("dagster")
    if key is None:
        command = [str(dagster_cli), "job", "execute", "-f", "bench/empty_location.py", "-j", "empty_job"]
    else:
        command = [str(dagster_cli), "job", "execute", "-m", "llm_assets.definitions", "-a", "defs"]
        command += ["-j", job_name, "--tags", json.dumps({"dagster/partition": key})]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fresh process run failed ({key or 'empty_job'}):\n{done.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--chunks", type=int, default=8, help="how many 250-item BANKING77 chunks per variant (<= 12)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    results: dict[str, list[tuple[float, float]]] = {}
    with simulator(), tempfile.TemporaryDirectory() as tmp:
        spec = banking77_spec()
        layout = spec_layout(spec)
        variants = {}
        for name in VARIANTS:
            home = Path(tmp) / name
            (home / "dagster").mkdir(parents=True)
            (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            instance = dg.DagsterInstance.from_config(str(home / "dagster"))
            dataset = register(spec, str(banking77_data()), instance, home)
            variants[name] = (home, instance, dataset)
            results[name] = []
        for i in range(args.chunks + 1):  # round 0 warms up
            for name, (home, instance, dataset) in variants.items():
                key = dataset.partition_keys[i]
                started = time.perf_counter()
                if name.startswith("fresh_process"):
                    _fresh_process_run(
                        home, layout.chunk_job, key if name == "fresh_process_ckpt_on" else None
                    )
                    wall = time.perf_counter() - started
                    run_id = instance.get_runs(limit=1)[0].run_id
                else:
                    if name == "multiprocess_ckpt_on":
                        os.environ["BENCH_HOME"] = str(home)
                        with dg.execute_job(
                            dg.reconstructable(multiprocess_job),
                            instance=instance,
                            tags={"dagster/partition": key},
                        ) as result:
                            ok, run_id = result.success, result.run_id
                    else:
                        defs = _defs_for(str(home))
                        job = (
                            _no_checks_job(defs, layout)
                            if name == "inprocess_no_checks"
                            else defs.resolve_job_def(layout.chunk_job)
                        )
                        run_config = _checkpoints_off(home) if name == "inprocess_ckpt_off" else None
                        result = job.execute_in_process(
                            instance=instance, partition_key=key, run_config=run_config
                        )
                        ok, run_id = result.success, result.run_id
                    wall = time.perf_counter() - started
                    if not ok:
                        raise SystemExit(f"{name} failed on {key}")
                if i > 0:
                    results[name].append((wall, _llm_seconds(instance, run_id)))
                print(f"{name:22s} {key}: wall {wall:.2f}s", flush=True)
    _report(results, args.chunks, write=not args.no_write)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _report(results: dict[str, list[tuple[float, float]]], chunks: int, write: bool) -> None:
    rows = []
    summary: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        walls = [w for w, _ in runs]
        llm = [x for _, x in runs]
        overhead = [w - x for w, x in runs]
        summary[name] = {
            "median_wall_s": statistics.median(walls),
            "median_llm_s": statistics.median(llm),
            "median_overhead_s": statistics.median(overhead),
        }
        rows.append(
            f"| {name} | {chunks} | {summary[name]['median_wall_s']:.2f} | {summary[name]['median_llm_s']:.2f} "
            f"| {summary[name]['median_overhead_s']:.2f} |"
        )
    on, off = summary["inprocess_ckpt_on"]["median_wall_s"], summary["inprocess_ckpt_off"]["median_wall_s"]
    # Paired by chunk (the two variants ran the same chunk back to back), so machine noise mostly cancels.
    ckpt_share = statistics.median(
        (w_on - w_off) / w_off
        for (w_on, _), (w_off, _) in zip(
            results["inprocess_ckpt_on"], results["inprocess_ckpt_off"], strict=True
        )
    )
    summary["checkpoint_wall_share"] = {"value": ckpt_share}
    in_run = summary["inprocess_ckpt_on"]["median_overhead_s"]
    checks = in_run - summary["inprocess_no_checks"]["median_overhead_s"]
    fresh = summary["fresh_process_ckpt_on"]["median_overhead_s"]
    multi = summary["multiprocess_ckpt_on"]["median_overhead_s"]
    floor = summary["fresh_process_empty_job"]["median_overhead_s"]
    table = "\n".join(
        [
            "| variant | partitions | median wall s | median LLM-call s | median fixed cost s |",
            "| --- | ---: | ---: | ---: | ---: |",
            *rows,
        ]
    )
    text = (
        "## Per-partition fixed cost and checkpoint cost (`python bench/pipeline_overhead.py`)\n\n"
        f"Zero-latency simulator, BANKING77 chunks of 250 items through the BANKING77 pipeline spec (classify "
        f"all, enrich low-confidence), "
        f"{chunks} partitions per variant after one warm-up round, interleaved. Fixed cost = wall time of the partition run minus the "
        "time the LLM resource spent in calls (run and step start, resource init, Parquet IO, event log, quality "
        "checks, checkpoints; for `fresh_process` also the interpreter start and imports). Measured on the "
        "2-core CI-class machine, shared.\n\n"
        f"{table}\n\n"
        f"- Orchestration overhead inside a partition run (in process): {in_run:.2f}s, of which the quality-gate "
        f"steps are {checks:.2f}s.\n"
        f"- A partition run in its own process (`dagster job execute`, interpreter start to exit, as a deployed "
        f"run worker pays it): {fresh:.2f}s. The same for a one-asset job importing the same libraries "
        f"(bench/empty_location.py): {floor:.2f}s, the floor under any fresh-process Dagster run of such a code "
        f"location. Chunkwise adds {fresh - floor:.2f}s to it.\n"
        f"- Multiprocess executor: {multi:.2f}s ({multi / in_run:.0f}x in process; every step pays a process "
        "start), so the chunk job runs in process and parallelism comes from concurrent chunk runs.\n"
        f"- Checkpointing on vs off (in process, median wall): {on:.2f}s vs {off:.2f}s; median paired "
        f"difference {ckpt_share * 100:+.1f}% of wall time (target under 3%: {_verdict(ckpt_share < 0.03)}; zero latency "
        "is its worst case, since real calls only add wall time).\n\n"
        f"Target, under 2 s fixed cost per partition run: inside the run {in_run:.2f}s ({_verdict(in_run < 2.0)}); "
        f"what Chunkwise adds to a fresh-process run {fresh - floor:.2f}s ({_verdict(fresh - floor < 2.0)}). "
        "The fresh-process total "
        f"({fresh:.2f}s) is {'under' if fresh < 2.0 else 'over'} 2 s; Dagster's own floor for such a run "
        f"({floor:.2f}s) is {'under' if floor < 2.0 else 'already over'} it, so no code location importing "
        f"pandas can do better with a process per run. Per item of a 250-item chunk: {fresh / 250 * 1000:.0f} ms "
        "of fixed cost, paid in parallel by concurrent chunk runs.\n"
    )
    print(text)
    if write:
        replace_section(ROOT / "docs" / "benchmarks.md", "pipeline", text)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
