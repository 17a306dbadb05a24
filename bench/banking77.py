"""What the benchmarks run: BANKING77's pipeline spec (pipelines/banking77.yaml), with overrides in spec terms,
against a local simulator it reaches through the variables the spec reads (as `make demo` does)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llm_assets.spec import PipelineSpec, load_pipeline
from scripts.demo import SIM_KEY, start_simulator

ROOT = Path(__file__).resolve().parent.parent
BANKING77_SPEC = ROOT / "pipelines" / "banking77.yaml"
SPEC_ENV = (
    "CHUNKWISE_LLM_BASE_URL",
    "CHUNKWISE_LLM_API_KEY",
    "CHUNKWISE_ANTHROPIC_BASE_URL",
    "CHUNKWISE_ANTHROPIC_API_KEY",
)
"""The variables the shipped specs' provider profiles read (both specs load in a code location)."""


def banking77_spec(overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """The BANKING77 spec with `overrides` (e.g. `{"stages": {"enriched": {"route": "all"}}}`); the provider
    variables must be set first (`simulator()`)."""
    return load_pipeline(BANKING77_SPEC, overrides=overrides)


def banking77_data() -> Path:
    """The shipped BANKING77 test split (3,080 rows, `text,category`): the spec's `input.demo_data`."""
    demo_data = load_pipeline(BANKING77_SPEC, require_secrets=False).input.demo_data
    assert demo_data, "pipelines/banking77.yaml names its demo data"
    return Path(demo_data)


def first_rows(source: Path, target: Path, n: int) -> Path:
    """The header and the first `n` rows of the CSV `source`, written to `target`."""
    with source.open(newline="") as src, target.open("w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        writer.writerow(next(reader))
        for i, row in enumerate(reader):
            if i >= n:
                break
            writer.writerow(row)
    return target


def simulator_env(root: str) -> dict[str, str]:
    """The spec variables pointed at the simulator whose root URL is `root`."""
    return dict(zip(SPEC_ENV, (f"{root}/v1", SIM_KEY, root, SIM_KEY), strict=True))


@contextmanager
def simulator(config: Path | None = None) -> Iterator[str]:
    """A simulator process (`config=None`: no latency, no faults, no limits) the spec variables point at, in
    this process and its children; yields its root URL and stops it (restoring the variables) on exit."""
    proc, root = start_simulator(config=config)
    saved = {name: os.environ.get(name) for name in SPEC_ENV}
    os.environ.update(simulator_env(root))
    try:
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        proc.terminate()
        proc.wait(timeout=10)
