"""Child process of the kill -9 test: materialize one partition against the simulator, then exit.

argv: base_url api_key home instance_dir partition_key max_concurrency
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg  # noqa: E402
from pipeline_support import materialize_partition, pipeline_defs  # noqa: E402

base_url, api_key, home, instance_dir, key, concurrency = sys.argv[1:7]
defs = pipeline_defs(
    base_url, api_key, Path(home), settings={"route": "none"}, llm={"max_concurrency": int(concurrency)}
)
with dg.DagsterInstance.local_temp(tempdir=instance_dir) as instance:
    materialize_partition(defs, instance, key)
