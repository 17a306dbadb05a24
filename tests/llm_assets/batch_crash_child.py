"""Child process of the batch crash test: submit one partition's `classified` batch and die (os._exit, like a
kill -9) at a step of the submission, through the resource's test seam `_batch_step_hook`.

argv: base_url api_key home instance_dir partition_key step   (step: uploaded | before_create | created)
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg  # noqa: E402
from pipeline_support import materialize_partition, pipeline_defs  # noqa: E402

from resources.llm import LLMResource  # noqa: E402

base_url, api_key, home, instance_dir, key, step = sys.argv[1:7]


def die_at(name: str, handle) -> None:
    if name == step:
        os._exit(17)


LLMResource._batch_step_hook = staticmethod(die_at)  # every resource copy the run makes sees it
defs = pipeline_defs(
    base_url,
    api_key,
    Path(home),
    settings={"route": "none", "classify_mode": "batch", "enrich_mode": "batch"},
)
with dg.DagsterInstance.local_temp(tempdir=instance_dir) as instance:
    materialize_partition(defs, instance, key)
sys.exit(0)  # the hook never fired
