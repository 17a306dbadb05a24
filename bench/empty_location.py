"""The floor under a fresh-process Dagster run: a code location with one trivial asset that imports the same
libraries as Chunkwise's (dagster, pandas, pyarrow, httpx). bench/pipeline_overhead.py runs it the way it runs a
chunk in a fresh process; the difference between the two is what Chunkwise adds to a deployed run."""

import dagster as dg
import httpx  # noqa: F401  (imported for its start-up cost only)
import pandas as pd
import pyarrow.parquet  # noqa: F401  (imported for its start-up cost only)


@dg.asset
def one_row() -> pd.DataFrame:
    return pd.DataFrame({"x": [1]})


defs = dg.Definitions(
    assets=[one_row],
    jobs=[dg.define_asset_job("empty_job", selection=[one_row], executor_def=dg.in_process_executor)],
)
