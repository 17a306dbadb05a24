"""Checkpoint cleanup: a chunk's item checkpoints are removed once its stage output is safely stored.

A success hook runs after the step's output was handed to the IO manager, so removing the checkpoint here can
never lose a result. A failed step keeps its checkpoint: the retry resumes from it, and a person can read it.
"""

import dagster as dg

from llm_assets.partitions import parse_chunk_key
from llm_assets.stages import checkpoint_root
from resources.checkpoints import ChunkCheckpoint


@dg.success_hook(required_resource_keys={"settings"})
def remove_checkpoints_on_success(context: dg.HookContext) -> None:
    run = context.instance.get_run_by_id(context.run_id)
    partition_key = run.tags.get("dagster/partition") if run else None
    if not partition_key or not context.op_output_values:
        # No output: a batch-mode stage that submitted (or is waiting on) a provider batch; its checkpoint and
        # batch journal are what the collecting run resumes from.
        return
    dataset_id, _ = parse_chunk_key(partition_key)
    stage = context.step_key.split(".")[-1]
    home = context.resources.settings.home_path()
    ChunkCheckpoint(checkpoint_root(home), dataset_id, partition_key, stage).remove()
    context.log.debug(f"removed the {stage} checkpoint of {partition_key}")
