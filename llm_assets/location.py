"""The code location's builder: every pipeline spec in the pipelines folder, as its own assets, with the sensors
that run them. llm_assets/definitions.py (what workspace.yaml loads) calls `defs_from_env()`; tools import this
module, so they never load specs they do not use.

Read it as a table of contents. A pipeline is one YAML file (docs/pipeline-spec.md); adding one needs no Python.
For each spec, llm_assets/pipeline_assets.py builds `<pipeline>/items` and one asset per stage (partitioned by
chunk), its quality gates, `<pipeline>/cost_ledger` and `<pipeline>/completion_report` (partitioned by dataset),
its chunk and completion jobs and one LLM resource per stage; llm_assets/trials.py a model trial asset
`trials/<pipeline>/<stage>` per stage that lists `candidates` (launched by hand). The sensors
(sensors/recovery.py) serve every pipeline: one new-dataset sensor per pipeline (with its
`<pipeline>__register_job`), one backfill, completion, batch-poll and check-alert sensor for all; all on by
default. Loading creates each pipeline's inbox (`$CHUNKWISE_HOME/inbox/<pipeline>`, or its `input.watch` folder
when that is under CHUNKWISE_HOME).

What differs per deployment comes from the environment:
- `CHUNKWISE_PIPELINES` (the folder of specs, default `<repo>/pipelines`, or one spec file); each spec names its
  own variables (`${CHUNKWISE_LLM_BASE_URL:-...}`, the *name* of the env var holding each API key, budgets, ...);
- `CHUNKWISE_PROFILE` (a profile file of spec overrides, spec_load.read_profile, merged into the one spec
  `CHUNKWISE_PIPELINES` names; `make demo` passes its PIPELINE/PROFILE/MODE/CHUNK choices this way);
- `CHUNKWISE_SENSOR_INTERVAL_S` (every sensor's minimum interval, over their own 30-60 s; `make demo` sets 1);
- `CHUNKWISE_HOME` (local state, default `./.chunkwise`);
- `CHUNKWISE_OUTPUTS_URI` (where stage outputs go: default `$CHUNKWISE_HOME/outputs`, or `s3://bucket/prefix`)
- `CHUNKWISE_S3_ENDPOINT_URL` / `CHUNKWISE_S3=1` (S3 for `s3://` datasets and outputs; on by itself when a
  watched URI or `CHUNKWISE_OUTPUTS_URI` is `s3://`; io_managers/s3_config.py).
A spec that does not load (an unknown field, a bad schema, a missing key variable, ...) stops the code location
with one message per problem naming the file, line and field (llm_assets/spec_load.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from io_managers.parquet_files import is_s3_uri
from io_managers.s3_config import s3_from_env
from llm_assets.pipeline_assets import pipeline_definitions
from llm_assets.settings import chunkwise_home
from llm_assets.spec import PipelineSpec, load_pipelines
from llm_assets.trials import trial_assets
from sensors.alerts import build_check_alert_sensor, check_alert_sensor
from sensors.new_datasets import ensure_watch_folder, pipeline_watch_uri
from sensors.recovery import build_recovery_sensors

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
PIPELINES_ENV = "CHUNKWISE_PIPELINES"
PROFILE_ENV = "CHUNKWISE_PROFILE"
SENSOR_INTERVAL_ENV = "CHUNKWISE_SENSOR_INTERVAL_S"
OUTPUTS_URI_ENV = "CHUNKWISE_OUTPUTS_URI"
SHARED_RESOURCES = ("settings", "io_manager", "s3")
"""Resources every pipeline defines alike (one home, one output location, one S3 client)."""


def pipelines_dir() -> Path:
    """`$CHUNKWISE_PIPELINES`, default the repository's `pipelines/` folder (or one spec file)."""
    return Path(os.environ.get(PIPELINES_ENV) or PIPELINES_DIR)


def specs_from_env() -> list[PipelineSpec]:
    """The specs `$CHUNKWISE_PIPELINES` names (a folder: every spec in it; a file: that spec), with
    `$CHUNKWISE_PROFILE`'s overrides merged into a single file's spec. Raises PipelineSpecError."""
    from llm_assets.spec import PipelineSpecError, load_pipeline
    from llm_assets.spec_load import read_profile

    where = pipelines_dir()
    profile = os.environ.get(PROFILE_ENV)
    if where.is_file():
        return [load_pipeline(where, overrides=read_profile(Path(profile)) if profile else None)]
    if profile:
        raise PipelineSpecError(
            [
                f"{PROFILE_ENV}={profile} applies to one spec, but {PIPELINES_ENV} is the folder {where}: set "
                f"{PIPELINES_ENV} to the spec file the profile is for, or unset {PROFILE_ENV}"
            ]
        )
    return load_pipelines(where)


def sensor_interval_from_env() -> int | None:
    """`$CHUNKWISE_SENSOR_INTERVAL_S` as whole seconds (1 or more), None when unset."""
    raw = os.environ.get(SENSOR_INTERVAL_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{SENSOR_INTERVAL_ENV} must be a whole number of seconds, 1 or more; got {raw!r}")
    return int(raw)


def build_defs(
    specs: Sequence[PipelineSpec],
    *,
    home: Path,
    outputs_uri: str | None = None,
    s3: Any = None,
    sensors: list[dg.SensorDefinition] | None = None,
    watch_uris: dict[str, str] | None = None,
    sensor_interval_s: int | None = None,
) -> dg.Definitions:
    """Every pipeline of `specs` in one Definitions: their assets, checks, jobs and resources, and the sensors.

    `sensors` replaces the default ones; `watch_uris` maps a pipeline to the folder its new-dataset sensor
    watches, over its spec's `input.watch` (with the default sensors, the local ones under `home` are created);
    `sensor_interval_s` replaces the default sensors' minimum intervals. `outputs_uri` is where stage outputs go
    (default `<home>/outputs`); `s3` (a dagster-aws S3Resource) reads `s3://` datasets and writes `s3://`
    outputs."""
    outputs = outputs_uri or str(home / "outputs")
    if is_s3_uri(outputs) and s3 is None:
        raise ValueError(
            f"outputs go to {outputs}, but no S3 resource was given: pass s3= (a dagster_aws S3Resource), or set "
            "CHUNKWISE_S3_ENDPOINT_URL / CHUNKWISE_S3=1 for defs_from_env"
        )
    assets: list[Any] = []
    checks: list[Any] = []
    jobs: list[Any] = []
    automation: list[dg.SensorDefinition] = []
    resources: dict[str, Any] = {}
    for spec in specs:
        part = pipeline_definitions(spec, home=home, outputs_uri=outputs, s3=s3)
        assets += list(part.assets or [])
        assets += trial_assets(spec)  # `trials/<pipeline>/<stage>`: launched by hand, in no job or sensor
        checks += list(part.asset_checks or [])
        jobs += list(part.jobs or [])
        automation += list(
            part.sensors or []
        )  # `<pipeline>__refresh_stale`, off by default (it spends money)
        for key, value in (part.resources or {}).items():
            if key in resources and key not in SHARED_RESOURCES:
                raise ValueError(f"two pipelines define the resource {key!r}; pipeline names must differ")
            resources.setdefault(key, value)
    if sensors is None:
        sensors = [
            *build_recovery_sensors(
                specs=specs,
                jobs=jobs,
                watch_uris=watch_uris,
                inbox=home / "inbox",
                minimum_interval_seconds=sensor_interval_s,
            ),
            check_alert_sensor
            if sensor_interval_s is None
            else build_check_alert_sensor(minimum_interval_seconds=sensor_interval_s),
        ]
        _create_watch_folders(specs, home, watch_uris or {})
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        sensors=[*sensors, *automation],
        resources=resources,
        # Runs of the implicit asset job (automation, the UI's Materialize) in one process, like the chunk job:
        # the multiprocess executor costs ~18 s per chunk (docs/benchmarks.md).
        executor=dg.in_process_executor,
    )


def _create_watch_folders(specs: Sequence[PipelineSpec], home: Path, watch_uris: dict[str, str]) -> None:
    """Each new-dataset sensor's local folder under `home` (the default `<home>/inbox/<pipeline>`), so turning a
    sensor on never fails on a folder nobody made. A folder elsewhere that is missing is left to the sensor's
    tick, which fails naming `input.watch` (a code location must load even when one folder is wrong)."""
    for spec in specs:
        watch = watch_uris.get(spec.name) or pipeline_watch_uri(spec, home / "inbox")
        with contextlib.suppress(OSError):  # outside home and missing, or not creatable: the tick says so
            ensure_watch_folder(watch, home, spec.name)


def s3_for(*uris: str, specs: Sequence[PipelineSpec] = ()) -> Any:
    """The deployment's S3 resource (io_managers/s3_config.py); required when any of `uris`, a spec's watched
    URI or the outputs URI is `s3://`. None for a local-only deployment."""
    watched = [spec.input.watch or "" for spec in specs]
    return s3_from_env(
        required=any(is_s3_uri(uri) for uri in (*uris, *watched, os.environ.get(OUTPUTS_URI_ENV, "")))
    )


def defs_from_env(
    home: Path | None = None, s3: Any = None, specs: Sequence[PipelineSpec] | None = None
) -> dg.Definitions:
    """The code location: the specs in `pipelines_dir()` (or `specs`), configured from the environment (see
    the module docstring); `s3` (from `s3_for`) overrides the S3 resource it describes."""
    chosen = list(specs) if specs is not None else specs_from_env()
    return build_defs(
        chosen,
        sensor_interval_s=sensor_interval_from_env(),
        home=home or chunkwise_home(),
        s3=s3 if s3 is not None else s3_for(specs=chosen),
        outputs_uri=os.environ.get(OUTPUTS_URI_ENV) or None,
    )
