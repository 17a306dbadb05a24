"""How fast this machine runs orchestration, relative to the machine the estimate's defaults were measured on.

A chunk run's orchestration (Dagster's event log in SQLite, the Parquet IO manager, the checks' pandas work, the
interpreter) is CPU and small-file work, and it differs between machines by more than the estimate's 20% target:
bench/estimate_accuracy.py measured 0.58 s per in-process BANKING77 chunk run on one 2-core machine and 2.2 s on
another, with the same code and data. So before the instance has any chunk run of its own to measure, the estimate does
not take the default as it is: it times a fixed piece of the same kind of work here (`probe_s`: a four-step
Dagster job run in process on a temporary SQLite instance, each step writing a chunk-sized table to Parquet and
recording a materialization) and scales the default by that time over the same probe's time where the default
was measured (`REFERENCE_PROBE_S`, measured with it by bench/estimate_accuracy.py; `speed_factor`).

The probe measures the machine as it is at that moment: on a machine busy with other work it reads slower, and
so will the runs if that work goes on. Once the pipeline has its own chunk runs on the instance, their median
replaces all of this (llm_assets/estimate.py `measured_overhead_per_chunk`).
"""

import logging
import tempfile
import time
from functools import cache
from pathlib import Path

import dagster as dg
import pandas as pd

from io_managers.parquet_files import write_parquet_atomic

PROBE_ROWS = 250
"""The probe's table size: a chunk of the demo's (BANKING77, 13 chunks of ~240 items)."""
PROBE_STEPS = 4
PROBE_RUNS = 5
"""Timed runs (after one warm-up that pays the imports); the fastest counts (a machine's speed is its best time:
the slower ones measured whatever else ran then, ~30% apart between two medians of 3)."""
REFERENCE_PROBE_S = 0.76
"""`probe_s` on the machine where OVERHEAD_PER_STEP_S and LAUNCH_OVERHEAD_S were measured: the median of 8
probes there (0.72-0.88 s; docs/benchmarks.md, "Estimate vs the run", names the probe of each bench run)."""


def _write(context: dg.OpExecutionContext, table: pd.DataFrame) -> dg.Output:
    name = context.op.name
    table = table.assign(step=name)
    folder = Path(context.run.tags["probe/dir"])
    path = write_parquet_atomic(table, str(folder / f"{context.run_id}-{name}.parquet"))
    context.log_event(dg.AssetMaterialization(f"probe_{name}", metadata={"rows": len(table), "path": path}))
    return dg.Output(table, metadata={"rows": len(table), "mean": float(table["value"].mean())})


@dg.op(name="s0")
def _first(context: dg.OpExecutionContext) -> dg.Output:
    return _write(context, _table())


def _later(name: str) -> dg.OpDefinition:
    @dg.op(name=name)
    def _op(context: dg.OpExecutionContext, rows: pd.DataFrame) -> dg.Output:
        return _write(context, rows)

    return _op


@dg.logger
def _silent(_init: dg.InitLoggerContext) -> logging.Logger:
    """The probe's runs log nowhere: a user running an estimate sees its result, not 24 steps of a probe."""
    log = logging.getLogger("chunkwise.machine_probe")
    log.propagate = False
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    return log


@cache
def _probe_job() -> dg.JobDefinition:
    later = [_later(f"s{i}") for i in range(1, PROBE_STEPS)]

    @dg.job(name="chunkwise_machine_probe", logger_defs={"silent": _silent})
    def _job() -> None:
        out = _first()
        for op in later:
            out = op(out)

    return _job


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "item_id": [f"item-{i:05d}" for i in range(PROBE_ROWS)],
            "text": [f"probe text number {i} " * 4 for i in range(PROBE_ROWS)],
            "value": [float(i) for i in range(PROBE_ROWS)],
        }
    )


@cache
def probe_s() -> float:
    """Seconds this machine takes for the probe job (the fastest of PROBE_RUNS runs after a warm-up). Cached for
    the process: an estimate job or `make estimate` pays it once (about 5 s on a quiet 2-core machine)."""
    job = _probe_job()
    times = []
    with tempfile.TemporaryDirectory(prefix="chunkwise-probe-") as folder:
        # An instance config of its own, so Dagster does not warn that there is none (a line on stderr that a
        # user of `make estimate` would read as a problem).
        (Path(folder) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
        with dg.DagsterInstance.local_temp(tempdir=folder) as instance:
            for i in range(PROBE_RUNS + 1):
                started = time.perf_counter()
                job.execute_in_process(  # raises what failed
                    run_config={"loggers": {"silent": {}}}, instance=instance, tags={"probe/dir": folder}
                )
                if i:
                    times.append(time.perf_counter() - started)
    return min(times)


def speed_factor() -> float:
    """This machine's probe time over the reference machine's: 2.0 means orchestration here takes twice as long."""
    return probe_s() / REFERENCE_PROBE_S
