"""Child process of the batch crash test: submit one partition's `classified` batch (BANKING77's spec, both
stages in batch mode, `enriched` routed nothing) and die (os._exit, like a kill -9) at a step of the submission,
through the resource's test seam `_batch_step_hook`. The simulator's API key comes from the environment the test
set (`point_at`).

argv: sim_url home instance_dir partition_key step   (sim_url: the simulator's root; step: uploaded |
before_create | created)
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests.spec_pipelines`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # batch_support

import dagster as dg  # noqa: E402
from batch_support import provider_spec  # noqa: E402

from resources.llm import LLMResource  # noqa: E402
from tests.spec_pipelines import run_chunk, spec_defs  # noqa: E402

sim_url, home, instance_dir, key, step = sys.argv[1:6]


def die_at(name: str, handle) -> None:
    if name == step:
        os._exit(17)


LLMResource._batch_step_hook = staticmethod(die_at)  # every resource copy the run makes sees it
spec = provider_spec(sim_url, "openai", "batch", route="none")
defs = spec_defs(spec, Path(home))
with dg.DagsterInstance.local_temp(tempdir=instance_dir) as instance:
    run_chunk(defs, spec, instance, key)
sys.exit(0)  # the hook never fired
