"""Child process of the kill -9 test: run one chunk of BANKING77's spec (classified only) against the
simulator, then exit. The simulator's URL and key come from the environment the test set (`point_at`).

argv: home instance_dir partition_key max_concurrency
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests.spec_pipelines`

import dagster as dg  # noqa: E402

from tests.spec_pipelines import run_chunk, spec_defs, test_spec  # noqa: E402

home, instance_dir, key, concurrency = sys.argv[1:5]
spec = test_spec(
    stages={"enriched": {"route": "none"}}, providers={"default": {"max_concurrency": int(concurrency)}}
)
defs = spec_defs(spec, Path(home))
with dg.DagsterInstance.local_temp(tempdir=instance_dir) as instance:
    run_chunk(defs, spec, instance, key)
