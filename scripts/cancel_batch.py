"""Cancel a chunk's provider batches:
`python -m scripts.cancel_batch <partition_key> [--stage classified] [--pipeline pipelines/banking77.yaml]`.

Calls the provider through the stage's LLM resource as the code location builds it from the pipeline spec
(`--pipeline`, default BANKING77's; its `${...}` settings and key variable read from the environment, as
llm_assets/location.py does) and reads the chunk's batch journal under `$CHUNKWISE_HOME/checkpoints`. It
1. writes the stage's cancel marker (`cancelled.json` beside the journal) first, so the stage submits nothing
   more for this chunk, even if a run is collecting right now;
2. cancels every batch of the stage that has not been collected, at the provider (lines already finished stay
   billed and collectable);
3. prints what it did. The batch poll sensor then sees the batches end and requests the collecting run: finished
   lines join the outputs, lines the cancel stopped become `canceled` dead letters, and the partition
   materializes with the partial results. To send the chunk again later, delete the marker (or the stage's
   checkpoint folder) and re-materialize the partition.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from llm_assets.partitions import parse_chunk_key
from llm_assets.stages import mark_stage_cancelled, stage_batch_journal
from resources.llm import LLMResource
from resources.llm.batch_journal import SUBMITTING

DEFAULT_PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "banking77.yaml"


def cancel_stage_batches(llm: LLMResource, home: Path, partition_key: str, stage: str) -> list[str]:
    """Mark the stage cancelled and cancel its uncollected batches at the provider; returns one line per batch.
    The journal and the mark are where the stage keeps them (files under the home, or the shared database)."""
    dataset_id, _ = parse_chunk_key(partition_key)
    journal = stage_batch_journal(home, dataset_id, partition_key, stage)
    if not journal.exists:
        raise SystemExit(
            f"{partition_key} has no {stage} batches (no journal at {journal.path}); nothing to cancel. "
            "Is the stage in batch mode, and is CHUNKWISE_HOME (or CHUNKWISE_STATE_URL) the pipeline's?"
        )
    mark = {"cancelled_at": datetime.now(UTC).isoformat(), "stage": stage}
    mark_stage_cancelled(home, dataset_id, partition_key, stage, mark)
    lines = []
    for handle in journal.pending:
        if handle.status == SUBMITTING or handle.batch_id is None:
            lines.append(f"{handle.submission_id}: not created at the provider; the marker stops it")
            continue
        status = llm.cancel_batch(handle)
        lines.append(
            f"{handle.batch_id}: {status.provider_status} ({status.succeeded + status.errored} of "
            f"{status.total} lines finished and kept)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.cancel_batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("partition_key", help="the chunk, e.g. banking77-test-3f2a9c1d__c00012")
    parser.add_argument(
        "--stage", default=None, help="the stage whose batches to cancel (default: the first)"
    )
    parser.add_argument(
        "--pipeline",
        default=str(DEFAULT_PIPELINE),
        help="the pipeline spec (YAML) the chunk belongs to; docs/pipeline-spec.md",
    )
    args = parser.parse_args(argv)

    import dagster as dg

    from llm_assets.location import build_defs
    from llm_assets.pipeline_assets import spec_layout
    from llm_assets.settings import chunkwise_home
    from llm_assets.spec import PipelineSpecError, load_pipeline

    try:
        spec = load_pipeline(args.pipeline)
    except PipelineSpecError as exc:
        for line in str(exc).splitlines():
            print(f"chunkwise: {line}", file=sys.stderr)
        return 2
    layout = spec_layout(spec)
    stage = args.stage or layout.stages[0]
    if stage not in layout.stages:
        parser.error(f"pipeline {spec.name} has no stage {stage!r}; its stages: {', '.join(layout.stages)}")
    home = chunkwise_home()
    key = layout.llm_key(stage)
    resource = build_defs([spec], home=home, sensors=[]).resources[key]
    # build_resources resolves the EnvVar API key the same way a run does.
    with dg.build_resources({key: resource}) as resources:
        llm = getattr(resources, key)
        for line in cancel_stage_batches(llm, home, args.partition_key, stage):
            print(line)
    print(
        f"cancelled {stage} of {args.partition_key}; the batch poll sensor requests the run that keeps the "
        "partial results"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
