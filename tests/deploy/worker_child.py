"""One "machine" of the two-worker test (test_two_workers.py): a process with its own CHUNKWISE_HOME and
DAGSTER_HOME that shares nothing with the other but the PostgreSQL database (Dagster's instance through
deploy/dagster-postgres.yaml, Chunkwise's state through CHUNKWISE_STATE_URL) and the S3 bucket (the data, the
outputs, dead letters and reports). It runs the given chunks of BANKING77's test spec through the code location
built from the environment, one after another, and prints one JSON line per chunk when it ends.

argv: spec overrides (JSON, `tests.spec_pipelines.test_spec` keyword arguments), chunk keys (comma-separated)
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests.spec_pipelines`

import dagster as dg  # noqa: E402

from llm_assets.failure_class import run_failure_class  # noqa: E402
from llm_assets.location import defs_from_env  # noqa: E402
from tests.spec_pipelines import run_chunk, test_spec  # noqa: E402

overrides, keys = json.loads(sys.argv[1]), sys.argv[2].split(",")
spec = test_spec(**overrides)
defs = defs_from_env(Path(os.environ["CHUNKWISE_HOME"]), specs=[spec])
with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
    for key in keys:
        result = run_chunk(defs, spec, instance, key, raise_on_error=False)
        failure = None if result.success else run_failure_class(instance, result.run_id)
        print(json.dumps({"key": key, "success": result.success, "failure": failure}), flush=True)
