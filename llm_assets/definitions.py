"""The code location: the one place where assets, resources, IO managers and sensors meet.

Read it as a table of contents. Until the pipeline lands it holds only what exists.
"""

import dagster as dg

defs = dg.Definitions()
