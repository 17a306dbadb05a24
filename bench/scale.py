"""Chunkwise at scale: a 1,000,000-row registration and a year of nightly datasets, on SQLite and PostgreSQL.

1. Registration: a synthetic BANKING77 file (`text,category`, texts of data/banking77/test.csv with the row number
   appended so every row is distinct; seeded) lands in the pipeline's inbox; the real new-dataset sensor requests
   `banking77__register_job`, which runs in a child process (a fresh Python, as a run worker: it loads the code
   location, then runs the job in process); its wall time and peak RSS (`ru_maxrss`) are measured. Then the
   sensor's next tick, which adds the dataset's chunk partitions and requests one run per chunk. Targets: 60 s,
   1 GiB. Twice: with BANKING77's ids from the row number, and with an `id` column (the duplicate-id audit).
2. A year of nightly datasets: `--days` datasets of `--chunks` chunks each in `banking77__chunks`, added night by
   night with `add_chunk_partitions` (the limit check included), and the last `--materialized-days` nights made:
   one SUCCESS run per chunk (run storage rows, tagged as the sensors tag them) and one runless materialization per
   chunk of each chunk asset (`banking77/items`, `classified`, `enriched`). Then, on that instance: tonight's file
   is registered through the new-dataset sensor and its run; one tick of the new-dataset sensor (the one adding
   tonight's chunks), the backfill sensor and the completion sensor (median of `--repeats`); the UI's partition
   page queries for `banking77/enriched`; and the code location's load (`dagster definitions validate` in a fresh
   process with `DAGSTER_HOME` on that instance). Both on the default SQLite instance and on a PostgreSQL instance
   (deploy/dagster-postgres.yaml, a real server from scripts/postgres_server.py with durable settings).

    .venv/bin/python -m bench.scale --save /tmp/scale.json            # the full run (~3 min), writes docs
    .venv/bin/python -m bench.scale --rows 20000 --days 10 --no-write   # a quick check (~35 s)
    .venv/bin/python -m bench.scale --from-saved /tmp/scale.json        # the docs section again, measuring nothing
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC_FILE = ROOT / "pipelines" / "banking77.yaml"
SOURCE = ROOT / "data" / "banking77" / "test.csv"
POSTGRES_CONFIG = ROOT / "deploy" / "dagster-postgres.yaml"
# Loading the spec checks that its key variable is set; nothing here calls a model.
os.environ.setdefault("CHUNKWISE_LLM_API_KEY", "sk-unused")
os.environ.setdefault("CHUNKWISE_ANTHROPIC_API_KEY", "sk-unused")

import dagster as dg  # noqa: E402
from dagster._core.definitions.partitions.context import partition_loading_context  # noqa: E402
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value  # noqa: E402
from dagster._core.test_utils import create_run_for_test  # noqa: E402

from bench.docs import replace_section  # noqa: E402
from llm_assets.chunk_status import ATTEMPT_TAG, DATASET_TAG, PARTITION_TAG, PROVIDER_TAG  # noqa: E402
from llm_assets.layout import PipelineLayout  # noqa: E402
from llm_assets.location import build_defs  # noqa: E402
from llm_assets.partitions import add_chunk_partitions, dataset_partition_keys  # noqa: E402
from llm_assets.pipeline_assets import spec_layout  # noqa: E402
from llm_assets.spec import PipelineSpec, load_pipeline  # noqa: E402

RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
GIB = 1024**3


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


# ------------------------------------------------------------------------------------------- the input file


def write_rows(path: Path, rows: int, seed: int = 0, with_ids: bool = False) -> Path:
    """`rows` BANKING77 rows (`text,category`), each text a seeded draw from the test split with ` #<row>`
    appended so no two rows are alike; `with_ids`: an `id` column first (`t0000042`)."""
    with SOURCE.open(newline="") as f:
        source = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    pick = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "category"] if with_ids else ["text", "category"])
        for i in range(rows):
            text, category = source[pick.randrange(len(source))]
            writer.writerow(
                [f"t{i:07d}", f"{text} #{i}", category] if with_ids else [f"{text} #{i}", category]
            )
    return path


def land(inbox: Path, name: str, rows: int, seed: int, with_ids: bool = False) -> Path:
    """A fully-written file in the pipeline's inbox (with its `._SUCCESS` marker, so one tick registers it)."""
    inbox.mkdir(parents=True, exist_ok=True)
    path = write_rows(inbox / name, rows, seed, with_ids)
    (inbox / f"{name}._SUCCESS").write_text("")
    return path


# ------------------------------------------------------------------------------------------- sensors, as the daemon


def evaluate(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions, cursor: str | None
) -> Any:
    """One evaluation of `sensor`, as the daemon's: with the instance's ref, its resources, inside a partition
    loading context. The partition requests it returns are not applied (`apply`)."""
    resources = {k: v for k, v in (defs.resources or {}).items() if k in sensor.required_resource_keys}
    with (
        dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            cursor=cursor,
            definitions=defs,
            resources=resources,
        ) as context,
        partition_loading_context(dynamic_partitions_store=instance),
    ):
        return sensor.evaluate_tick(context)


def apply(instance: dg.DagsterInstance, data: Any) -> None:
    """What the daemon does after a tick with its partition requests: adds the keys not there yet."""
    for request in data.dynamic_partitions_requests or []:
        keys = list(request.partition_keys)
        existing = set(instance.get_existing_dynamic_partitions(request.partitions_def_name, keys))
        instance.add_dynamic_partitions(request.partitions_def_name, [k for k in keys if k not in existing])


def registration_request(data: Any) -> dg.RunRequest:
    requests = [r for r in data.run_requests or [] if (r.job_name or "").endswith("__register_job")]
    assert len(requests) == 1, f"expected one registration run request, got {data.run_requests}"
    return requests[0]


def run_tags(sensor: dg.SensorDefinition, request: dg.RunRequest) -> dict[str, str]:
    return {**request.tags, RUN_KEY_TAG: request.run_key or "", SENSOR_NAME_TAG: sensor.name}


def location(
    home: Path, with_ids: bool = False
) -> tuple[PipelineSpec, PipelineLayout, dg.Definitions, dict[str, dg.SensorDefinition]]:
    """The code location of the BANKING77 spec alone (llm_assets/location.py), with its sensors by name;
    `with_ids`: reading ids from an `id` column (`input.columns.id: id`, so registration audits duplicate ids)."""
    spec = load_pipeline(SPEC_FILE, overrides={"input": {"columns": {"id": "id"}}} if with_ids else None)
    defs = build_defs([spec], home=home)
    return spec, spec_layout(spec), defs, {s.name: s for s in defs.sensors or []}


# ------------------------------------------------------------------------------------------- 1. registration


def _register_child(args: argparse.Namespace) -> None:
    """In a fresh process (a run worker's): load the code location, run the registration run, print JSON."""
    spec, _, defs, _ = location(Path(args.home), args.with_ids)
    job = defs.resolve_job_def(f"{spec.name}__register_job")
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with dg.DagsterInstance.get() as instance:
        start = time.perf_counter()
        result = job.execute_in_process(
            run_config=json.loads(args.run_config), instance=instance, tags=json.loads(args.tags)
        )
        run_s = time.perf_counter() - start
    assert result.success, "the registration run failed"
    print(
        json.dumps(
            {
                "run_s": run_s,
                "rss_loaded_bytes": rss_loaded,
                "rss_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )


def _child_env(home: Path, dagster_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "CHUNKWISE_HOME": str(home),
        "CHUNKWISE_PIPELINES": str(SPEC_FILE),
    }


def measure_registration(rows: int, tmp: Path, with_ids: bool = False) -> dict[str, float]:
    home, dagster_home = tmp / "home", tmp / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    _, _, defs, sensors = location(home, with_ids)
    sensor = sensors["banking77__new_dataset_sensor"]
    start = time.perf_counter()
    path = land(home / "inbox" / "banking77", "big.csv", rows, seed=1, with_ids=with_ids)
    out: dict[str, float] = {"rows": rows, "file_bytes": path.stat().st_size}
    out["write_s"] = time.perf_counter() - start
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        first = evaluate(sensor, instance, defs, None)
        request = registration_request(first)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.scale",
                "--_register",
                "--home",
                str(home),
                "--run-config",
                json.dumps(request.run_config),
                "--tags",
                json.dumps(run_tags(sensor, request)),
                *(["--with-ids"] if with_ids else []),
            ],
            cwd=ROOT,
            env=_child_env(home, dagster_home),
            capture_output=True,
            text=True,
            check=False,
        )
        out["child_wall_s"] = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"the registration child failed:\n{proc.stderr[-3000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        out.update({f"child_{k}": v for k, v in child.items()})
        out["rusage_children_bytes"] = max(
            before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        )
        start = time.perf_counter()
        second = evaluate(sensor, instance, defs, first.cursor)
        out["tick_s"] = time.perf_counter() - start
        out["chunk_runs"] = len(second.run_requests or [])
        start = time.perf_counter()
        apply(instance, second)
        out["add_partitions_s"] = time.perf_counter() - start
        out["partitions"] = len(instance.get_dynamic_partitions("banking77__chunks"))
    return out


# ------------------------------------------------------------------------------------------- 2. a year of nightly datasets


def nightly_id(day: int) -> str:
    return f"banking77-nightly-{day:04d}-{day * 2654435761 % 16**8:08x}"


def fill_year(
    instance: dg.DagsterInstance, layout: PipelineLayout, days: int, chunks: int, made_days: int
) -> dict[str, float]:
    """`days` nightly datasets' chunk partitions, the last `made_days` of them run and materialized."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    for day in range(days):
        add_chunk_partitions(
            instance,
            dataset_partition_keys(nightly_id(day), chunks),
            partitions_name=layout.chunks_partitions,
        )
    out["add_s"] = time.perf_counter() - start
    made = [
        (nightly_id(day), key)
        for day in range(max(0, days - made_days), days)
        for key in dataset_partition_keys(nightly_id(day), chunks)
    ]
    start = time.perf_counter()
    for dataset_id, key in made:
        tags = {PARTITION_TAG: key, DATASET_TAG: dataset_id, PROVIDER_TAG: "openai", ATTEMPT_TAG: "1"}
        create_run_for_test(
            instance, job_name=layout.chunk_job, status=dg.DagsterRunStatus.SUCCESS, tags=tags
        )
    out["runs"] = len(made)
    out["runs_per_s"] = len(made) / max(time.perf_counter() - start, 1e-9)
    assets = [layout.key(name) for name in ("items", *layout.stages)]
    start = time.perf_counter()
    for _, key in made:
        for asset_key in assets:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset_key, partition=key))
    out["events"] = len(made) * len(assets)
    out["events_per_s"] = out["events"] / max(time.perf_counter() - start, 1e-9)
    return out


def measure_year(
    instance: dg.DagsterInstance,
    dagster_home: Path,
    home: Path,
    days: int,
    chunks: int,
    made_days: int,
    repeats: int,
) -> dict[str, float]:
    spec, layout, defs, sensors = location(home)
    out = fill_year(instance, layout, days, chunks, made_days)
    name = layout.chunks_partitions
    out["partitions"] = len(instance.get_dynamic_partitions(name))

    # Tonight's file, through the product's path: the sensor's tick, the registration run, the next tick.
    new_dataset = sensors[f"{spec.name}__new_dataset_sensor"]
    land(home / "inbox" / spec.name, "tonight.csv", chunks * spec.input.chunk_size, seed=2)
    first = evaluate(new_dataset, instance, defs, None)
    request = registration_request(first)
    start = time.perf_counter()
    result = defs.resolve_job_def(request.job_name or "").execute_in_process(
        run_config=request.run_config, instance=instance, tags=run_tags(new_dataset, request)
    )
    out["register_run_s"] = time.perf_counter() - start
    assert result.success
    adding = evaluate(new_dataset, instance, defs, first.cursor)
    assert len(adding.run_requests or []) == chunks, adding.run_requests
    out["tick_new_dataset_s"] = _median_s(
        lambda: evaluate(new_dataset, instance, defs, first.cursor), repeats
    )
    apply(instance, adding)

    backfill = sensors["chunk_backfill_sensor"]
    cursor = evaluate(backfill, instance, defs, None).cursor
    out["tick_backfill_s"] = _median_s(lambda: evaluate(backfill, instance, defs, cursor), repeats)
    completion = sensors["dataset_completion_sensor"]
    out["tick_completion_s"] = _median_s(lambda: evaluate(completion, instance, defs, None), repeats)

    # The UI's partition page of one stage asset: the keys, and the materialized/failed/in-progress subsets
    # from the asset status cache (built on the first call, then read and updated).
    final = layout.final_key
    partitions_def = dg.DynamicPartitionsDefinition(name=name)
    out["list_partitions_s"] = _median_s(lambda: instance.get_dynamic_partitions(name), repeats)
    out["materialized_partitions_s"] = _median_s(lambda: instance.get_materialized_partitions(final), repeats)
    out["materialized"] = len(instance.get_materialized_partitions(final))

    def status_page() -> int:
        keys = instance.get_dynamic_partitions(name)
        value = get_and_update_asset_status_cache_value(instance, final, partitions_def)
        assert value is not None
        with partition_loading_context(dynamic_partitions_store=instance):
            made = value.deserialize_materialized_partition_subsets(partitions_def)
            value.deserialize_failed_partition_subsets(partitions_def)
            value.deserialize_in_progress_partition_subsets(partitions_def)
        return len(keys) - len(made)

    start = time.perf_counter()
    status_page()
    out["status_cold_s"] = time.perf_counter() - start
    out["status_warm_s"] = _median_s(status_page, repeats)
    out["load_s"] = code_location_load_s(dagster_home, home, max(1, min(repeats, 3)))
    return out


def code_location_load_s(dagster_home: Path, home: Path, repeats: int) -> float:
    """`dagster definitions validate` of the code location, in a fresh process on that instance (median)."""
    env = _child_env(home, dagster_home)
    argv = [
        str(Path(sys.executable).parent / "dagster"),
        "definitions",
        "validate",
        "-m",
        "llm_assets.definitions",
    ]

    def once() -> None:
        subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)

    return _median_s(once, repeats)


@contextmanager
def sqlite_instance(tmp: Path) -> Iterator[tuple[dg.DagsterInstance, Path]]:
    """The default instance of a fresh DAGSTER_HOME (SQLite files under it)."""
    dagster_home = tmp / "dagster_home"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        yield instance, dagster_home


@contextmanager
def postgres_instance(tmp: Path) -> Iterator[tuple[dg.DagsterInstance, Path]]:
    """deploy/dagster-postgres.yaml as DAGSTER_HOME/dagster.yaml, on a real server (durable settings)."""
    from scripts.postgres_server import ROLE, PostgresServer

    server = PostgresServer(fast=False).start()
    saved = {k: os.environ.get(k) for k in _PG_ENV}
    try:
        server.create_database("scale")
        os.environ.update(
            {
                "CHUNKWISE_PG_HOST": "127.0.0.1",
                "CHUNKWISE_PG_PORT": str(server.port),
                "CHUNKWISE_PG_USER": ROLE,
                "CHUNKWISE_PG_PASSWORD": "",
                "CHUNKWISE_PG_DB": "scale",
            }
        )
        dagster_home = tmp / "dagster_home"
        dagster_home.mkdir(parents=True)
        shutil.copyfile(POSTGRES_CONFIG, dagster_home / "dagster.yaml")
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            yield instance, dagster_home
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


_PG_ENV = (
    "CHUNKWISE_PG_HOST",
    "CHUNKWISE_PG_PORT",
    "CHUNKWISE_PG_USER",
    "CHUNKWISE_PG_PASSWORD",
    "CHUNKWISE_PG_DB",
)
BACKENDS = {"sqlite": sqlite_instance, "postgres": postgres_instance}


# ------------------------------------------------------------------------------------------- report


def report(
    regs: dict[str, dict[str, float]], year: dict[str, dict[str, float]], args: argparse.Namespace
) -> str:
    load = getattr(args, "load", None) or os.getloadavg()[0]
    when = getattr(args, "measured_at", None) or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Scale: a 1,000,000-row registration and a year of nightly datasets (`bench/scale.py`)",
        "",
        f"Measured {when}, dagster {dg.__version__}, on the shared {os.cpu_count()}-core machine (1-min load "
        f"average {load:.1f} at the end; other work ran meanwhile, so wall times are noisy to about ±50%; "
        f"ticks and queries are medians of {args.repeats}).",
        "",
    ]
    if regs:
        first = next(iter(regs.values()))
        variants = list(regs)
        meets = all(r["child_wall_s"] <= 60 and r["child_rss_peak_bytes"] <= GIB for r in regs.values())

        def row(label: str, cell: Callable[[dict[str, float]], str]) -> str:
            return f"| {label} | " + " | ".join(cell(regs[v]) for v in variants) + " |"

        lines += [
            f"**Registration of {first['rows']:,.0f} rows** (a {first['file_bytes'] / 2**20:.0f} MiB CSV of BANKING77 "
            "texts with the row number appended, seeded, `text,category`): the new-dataset sensor's tick requests "
            "`banking77__register_job`; the run goes in a fresh Python process, as a run worker (imports, loads the "
            "code location, runs the job in process on a SQLite instance; peak RSS is that process's `ru_maxrss`); "
            "then the sensor's next tick returns the chunk partitions and one run request per chunk. BANKING77's "
            "spec derives ids from the row number; the second column reads them from an `id` column "
            "(`input.columns.id: id`), which adds the duplicate-id audit (a second pass, chunk by chunk).",
            "",
            "| what | " + " | ".join(variants) + " |",
            "| --- |" + " ---: |" * len(variants),
            row("registration process, wall", lambda r: f"{r['child_wall_s']:.1f} s"),
            row(
                "of which starting Python, imports, loading the code location",
                lambda r: f"{r['child_wall_s'] - r['child_run_s']:.1f} s",
            ),
            row("of which the registration run", lambda r: f"{r['child_run_s']:.1f} s"),
            row(
                "peak RSS of the registration process",
                lambda r: f"{r['child_rss_peak_bytes'] / 2**20:.0f} MiB",
            ),
            row(
                "RSS before the run (code location loaded)",
                lambda r: f"{r['child_rss_loaded_bytes'] / 2**20:.0f} MiB",
            ),
            row(
                f"next new-dataset tick ({first['chunk_runs']:,.0f} run requests + the partition request)",
                lambda r: f"{r['tick_s']:.2f} s",
            ),
            row(
                f"adding the {first['partitions']:,.0f} partitions after the tick (as the daemon does)",
                lambda r: f"{r['add_partitions_s']:.2f} s",
            ),
            "",
            f"Targets 60 s and 1 GiB per registration: **{'met' if meets else 'missed'}**.",
            "",
        ]
    if year:
        any_year = next(iter(year.values()))
        lines += [
            f"**A year of nightly datasets**: {args.days} datasets x {args.chunks} chunks = "
            f"{any_year['partitions']:,.0f} partitions of `banking77__chunks`, added night by night with "
            f"`add_chunk_partitions` (the live-limit check included); the last {args.materialized_days} nights made "
            f"(one SUCCESS chunk run each, {any_year['events']:,.0f} runless materializations of `banking77/items`, "
            "`classified`, `enriched`). Then tonight's file lands and is registered through the sensor and its run. "
            "SQLite: the default instance of a fresh DAGSTER_HOME; PostgreSQL: deploy/dagster-postgres.yaml on a "
            "local server started by scripts/postgres_server.py with durable settings (fsync on).",
            "",
        ]
        names = list(year)
        rows = [
            ("setup: add all partitions, night by night (s)", "add_s", "{:.1f}"),
            ("setup: chunk runs stored per second", "runs_per_s", "{:.0f}"),
            ("setup: materializations stored per second", "events_per_s", "{:.0f}"),
            ("registration run of tonight's file (s)", "register_run_s", "{:.2f}"),
            ("tick: new-dataset sensor, adding tonight's chunks (s)", "tick_new_dataset_s", "{:.3f}"),
            ("tick: backfill sensor, steady state (s)", "tick_backfill_s", "{:.3f}"),
            ("tick: completion sensor, tonight's dataset open (s)", "tick_completion_s", "{:.3f}"),
            ("`get_dynamic_partitions` (s)", "list_partitions_s", "{:.3f}"),
            ("`get_materialized_partitions(enriched)` (s)", "materialized_partitions_s", "{:.3f}"),
            ("partition page: keys + status cache, first (build) (s)", "status_cold_s", "{:.3f}"),
            ("partition page: keys + status cache, again (s)", "status_warm_s", "{:.3f}"),
            ("code location load, `dagster definitions validate` (s)", "load_s", "{:.1f}"),
        ]
        both = len(names) == 2
        header = "| what | " + " | ".join(names) + (" | postgres / sqlite |" if both else " |")
        lines += [header, "| --- |" + " ---: |" * (len(names) + both)]
        for label, key, fmt in rows:
            cells = [fmt.format(year[n][key]) for n in names]
            if both:
                a, b = year["sqlite"][key], year["postgres"][key]
                cells.append(f"{b / a:.1f}x" if a else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", *READING]
    return "\n".join(lines)


READING = [
    "How to read it:",
    "- Registration is one streamed pass (SHA-256, chunk boundaries) and its memory is flat: the peak is the "
    "loaded code location's, the run adds a few MiB. An `id` column adds the duplicate-id audit, a second pass "
    "that reads every chunk through `read_chunk` (a DataFrame per chunk) into an on-disk SQLite table: most of "
    "that registration's time. Before 2026-12-01 `read_chunk` derived each row's team from its label by "
    "scanning the prefix rules per row (the run took 18.1 s then); it now does it once per distinct label "
    "(llm_assets/datasets.py `_to_frame`). The rest is building a DataFrame per chunk and one SQLite insert "
    "per id.",
    "- The tick after a 1,000,000-row registration returns 4,000 run requests and 4,000 partition keys in one "
    "evaluation, well inside the daemon's 60 s tick timeout.",
    "- What each tick reads: the new-dataset sensor lists its inbox, finds its registration run by run key and "
    "checks only tonight's keys (`missing_partitions`, bounded `IN` queries), so it does not grow with the "
    "partition count; the backfill sensor reads run-failure events after its cursor and the in-flight runs (the "
    "orphan sweep), never partitions; the completion sensor reads, per dataset still open, its chunks' runs and "
    "`get_materialized_partitions` of the last stage (every materialized key of that asset, 1,200 here).",
    "- What does grow with the year: whatever loads the whole key set: `get_dynamic_partitions`, the "
    "registration run's limit check (`check_partition_room` counts the live keys once per registration) and the "
    "asset status cache behind the UI's partition bar. Dagster 1.13.27 identifies a dynamic partitions "
    "definition by a hash of all its keys (`get_dynamic_partitions_definition_id`), so each status call loads "
    "the key set twice (about two thirds of a repeated call, profiled), and each night's new keys change that "
    "hash, so the stored cache is dropped and rebuilt from every materialization once per night. At 14,600 keys "
    "each is well under a second on both backends; bench/partition_counts.py has the SQLite costs up to "
    "200,000 keys and 20,000 materialized.",
    "- PostgreSQL answers each small query over a local TCP connection, hence a few times SQLite's time per "
    "query at this size; it stores runs more slowly (durable commits). The code location's load does not read "
    "the instance's partitions: the same on both.",
    "- The run storage holds only the made nights' runs (one SUCCESS run per chunk, no failures), so the "
    "backfill tick is its steady state; a night with failures reads those runs too.",
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the registered file (0: skip)")
    parser.add_argument("--days", type=int, default=365, help="nightly datasets (0: skip part 2)")
    parser.add_argument("--chunks", type=int, default=40, help="chunks per nightly dataset")
    parser.add_argument(
        "--materialized-days",
        type=int,
        help="the last nights run and materialized (default 30, at most a third)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--save", type=Path, help="also write the raw numbers to this JSON file")
    parser.add_argument(
        "--from-saved", type=Path, help="render the numbers of a --save file (measures nothing)"
    )
    parser.add_argument("--_register", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--run-config", help=argparse.SUPPRESS)
    parser.add_argument("--tags", help=argparse.SUPPRESS)
    parser.add_argument("--with-ids", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.materialized_days is None:
        args.materialized_days = min(30, max(1, args.days // 3))
    if args._register:
        _register_child(args)
        return
    if args.from_saved:
        saved = json.loads(args.from_saved.read_text())
        args = argparse.Namespace(**{**vars(args), **saved["args"]})
        finish(saved["registration"], saved["year"], args, saved["took_s"])
        return
    started = time.perf_counter()
    regs: dict[str, dict[str, float]] = {}
    year: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="chunkwise-scale-") as tmp:
        if args.rows:
            for variant, with_ids in (("ids from the row number", False), ("ids from an id column", True)):
                folder = Path(tmp) / f"registration-{int(with_ids)}"
                regs[variant] = measure_registration(args.rows, folder, with_ids)
                print(json.dumps({variant: regs[variant]}), flush=True)
        if args.days:
            for backend in args.backends.split(","):
                folder = Path(tmp) / backend
                with BACKENDS[backend](folder) as (instance, dagster_home):
                    year[backend] = measure_year(
                        instance,
                        dagster_home,
                        folder / "home",
                        args.days,
                        args.chunks,
                        args.materialized_days,
                        args.repeats,
                    )
                print(json.dumps({backend: year[backend]}), flush=True)
    took_s = time.perf_counter() - started
    if args.save:
        kept = {k: getattr(args, k) for k in ("rows", "days", "chunks", "materialized_days", "repeats")}
        kept |= {"load": os.getloadavg()[0], "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
        args.save.write_text(json.dumps({"args": kept, "registration": regs, "year": year, "took_s": took_s}))
    finish(regs, year, args, took_s)


def finish(
    regs: dict[str, dict[str, float]],
    year: dict[str, dict[str, float]],
    args: argparse.Namespace,
    took_s: float,
) -> None:
    text = report(regs, year, args) + f"\n\nThe whole bench took {took_s:.0f} s.\n"
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "benchmarks.md", "scale", text)


if __name__ == "__main__":
    main()
