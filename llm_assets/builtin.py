"""The code location: the one place where assets, resources, IO managers and sensors meet.

Read it as a table of contents. Provider settings come from the environment so the same code runs against
the local simulator (the demo), a real provider, or an OpenAI-compatible server:
- `CHUNKWISE_LLM_PROVIDER` (`openai` | `anthropic`, default `openai`)
- `CHUNKWISE_LLM_BASE_URL` (default the simulator at `http://127.0.0.1:8765/v1`)
- `CHUNKWISE_LLM_API_KEY` (read by Dagster at run time through `EnvVar`; never shown in the UI)
- `CHUNKWISE_CLASSIFY_MODEL` / `CHUNKWISE_ENRICH_MODEL` (defaults `gpt-6-luna` / `gpt-6.2-sol`)
- `CHUNKWISE_HOME` (local state, default `./.chunkwise`)
- `CHUNKWISE_MODE` (`online` | `batch`, default `online`: both LLM stages through the providers' Batch APIs,
  collected by `batch_poll_sensor`; docs/batch_mode.md)
- `CHUNKWISE_BUDGET_RUN_USD` / `CHUNKWISE_BUDGET_DATASET_USD` / `CHUNKWISE_BUDGET_DAY_USD` (hard caps, USD)
- `CHUNKWISE_OUTPUTS_URI` (where stage outputs go: default `$CHUNKWISE_HOME/outputs`, or `s3://bucket/prefix`)
- `CHUNKWISE_S3_ENDPOINT_URL` / `CHUNKWISE_S3=1` (S3 for `s3://` datasets and outputs; on by itself when
  `CHUNKWISE_WATCH_URI` or `CHUNKWISE_OUTPUTS_URI` is `s3://`; io_managers/s3_config.py)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from io_managers.chunk_parquet import ChunkParquetIOManager
from io_managers.parquet_files import is_s3_uri
from io_managers.s3_config import s3_from_env
from llm_assets.assets import classified, enriched, items
from llm_assets.checks import QualityGateSettings, stage_checks
from llm_assets.completion import CompletionSettings, ledger_assets
from llm_assets.settings import PipelineSettings, chunkwise_home, stage_modes_from_env
from resources.llm import LLMResource
from sensors.alerts import check_alert_sensor
from sensors.recovery import WATCH_URI_ENV, recovery_sensors

DATA = Path(__file__).resolve().parent.parent / "data" / "banking77"
DEFAULT_BASE_URL = "http://127.0.0.1:8765/v1"
OUTPUTS_URI_ENV = "CHUNKWISE_OUTPUTS_URI"

# Checkpoints are not removed when a stage succeeds: only the completion step removes them, once every stage of
# the chunk is materialized, so a kill between two stages never makes the restart pay a finished stage again.
stage_assets = [items, classified, enriched]


def build_defs(
    *,
    base_url: str,
    api_key: str | dg.EnvVar,
    home: Path,
    provider: str = "openai",
    classify_model: str = "gpt-6-luna",
    enrich_model: str = "gpt-6.2-sol",
    judge_model: str | None = None,
    settings: dict[str, Any] | None = None,
    llm: dict[str, Any] | None = None,
    quality_gates: dict[str, Any] | None = None,
    completion: dict[str, Any] | None = None,
    sensors: list[dg.SensorDefinition] | None = None,
    s3: Any = None,
    outputs_uri: str | None = None,
) -> dg.Definitions:
    """The pipeline wired to one provider endpoint.

    `settings`, `llm`, `quality_gates`, `completion` override fields of PipelineSettings, LLMResource (both
    models), QualityGateSettings and CompletionSettings; `sensors` replaces the default sensors; `s3` (a
    dagster-aws S3Resource) reads `s3://` datasets and watched prefixes and writes `s3://` outputs (None: local
    files only); `outputs_uri` is where stage outputs go (default `<home>/outputs`).
    """
    outputs = outputs_uri or str(home / "outputs")
    if is_s3_uri(outputs) and s3 is None:
        raise ValueError(
            f"outputs go to {outputs}, but no S3 resource was given: pass s3= (a dagster_aws S3Resource), or set "
            "CHUNKWISE_S3_ENDPOINT_URL / CHUNKWISE_S3=1 for defs_from_env"
        )

    def _llm(model: str) -> LLMResource:
        return LLMResource(provider=provider, base_url=base_url, api_key=api_key, model=model, **(llm or {}))

    return dg.Definitions(
        # What is computed: chunk stages, then per dataset the cost ledger and the completion report.
        assets=[*stage_assets, *ledger_assets],
        # Quality gates on every chunk of classified and enriched.
        asset_checks=stage_checks,
        # What happens on its own: new datasets, backfills of failed chunks, completion, check alerts.
        sensors=sensors if sensors is not None else [*recovery_sensors, check_alert_sensor],
        resources={
            "settings": PipelineSettings(
                home=str(home), **{"few_shot_path": str(DATA / "few_shot.csv"), **(settings or {})}
            ),
            "classifier_llm": _llm(classify_model),
            "enricher_llm": _llm(enrich_model),
            "judge_llm": _llm(judge_model or enrich_model),  # scores sampled items that have no gold label
            "quality_gates": QualityGateSettings(**(quality_gates or {})),
            "completion": CompletionSettings(**(completion or {})),
            "io_manager": ChunkParquetIOManager(base_uri=outputs, s3=s3 if is_s3_uri(outputs) else None),
            "s3": s3 if s3 is not None else dg.ResourceDefinition.none_resource("no S3: local files only"),
        },
    )


def s3_for(*uris: str) -> Any:
    """The deployment's S3 resource (io_managers/s3_config.py); required when any of `uris`, the watched URI or
    the outputs URI is `s3://`. None for a local-only deployment."""
    env_uris = (os.environ.get(WATCH_URI_ENV, ""), os.environ.get(OUTPUTS_URI_ENV, ""))
    return s3_from_env(required=any(is_s3_uri(uri) for uri in (*uris, *env_uris)))


def defs_from_env(home: Path | None = None, s3: Any = None) -> dg.Definitions:
    """The pipeline configured from the CHUNKWISE_* environment variables (see the module docstring); `s3`
    (from `s3_for`) overrides the S3 resource they describe."""
    return build_defs(
        provider=os.environ.get("CHUNKWISE_LLM_PROVIDER", "openai"),
        base_url=os.environ.get("CHUNKWISE_LLM_BASE_URL", DEFAULT_BASE_URL),
        api_key=dg.EnvVar("CHUNKWISE_LLM_API_KEY"),
        classify_model=os.environ.get("CHUNKWISE_CLASSIFY_MODEL", "gpt-6-luna"),
        enrich_model=os.environ.get("CHUNKWISE_ENRICH_MODEL", "gpt-6.2-sol"),
        home=home or chunkwise_home(),
        settings=stage_modes_from_env(),
        llm=budgets_from_env(),
        s3=s3 if s3 is not None else s3_for(),
        outputs_uri=os.environ.get(OUTPUTS_URI_ENV) or None,
    )


BUDGET_ENV = {
    "CHUNKWISE_BUDGET_RUN_USD": "budget_run_usd",
    "CHUNKWISE_BUDGET_DATASET_USD": "budget_dataset_usd",
    "CHUNKWISE_BUDGET_DAY_USD": "budget_day_usd",
}


def budgets_from_env() -> dict[str, float]:
    """Hard USD caps from CHUNKWISE_BUDGET_{RUN,DATASET,DAY}_USD (unset: no cap), for every LLM resource."""
    caps: dict[str, float] = {}
    for name, field in BUDGET_ENV.items():
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        try:
            caps[field] = float(text)
        except ValueError:
            raise ValueError(
                f"{name}={text!r} is not a number of US dollars; set it like {name}=12.50"
            ) from None
    return caps


defs = defs_from_env()
