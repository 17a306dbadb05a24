"""The code location (workspace.yaml): every pipeline spec in `$CHUNKWISE_PIPELINES` (default `pipelines/`).

What is built from each spec and what the environment sets: llm_assets/location.py.
"""

from llm_assets import schema_check_cache
from llm_assets.location import defs_from_env

schema_check_cache.install()
defs = defs_from_env()
