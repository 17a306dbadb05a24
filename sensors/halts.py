"""Is a provider stopped? One answer for every sensor that launches chunk runs.

A job-fatal answer (bad key, no quota, unknown model) halts the provider in the spend ledger the moment it
arrives (resources/llm/spend_ledger.py: every process stops sending); the backfill sensor also blocks the
provider when it reads such a failed run. Until a person clears it (`python -m sensors.backfill clear
<provider>`), the new-dataset sensor registers new files but holds their chunk runs, and the backfill sensor
re-runs nothing for that provider.
"""

from __future__ import annotations

import json
import time
from typing import Any

import dagster as dg

from resources.llm.resource import spend_ledger_for

CLEAR_KEY_PREFIX = "chunkwise/backfill/clear/"
RETRY_NOW_KEY_PREFIX = "chunkwise/backfill/retry-now/"
BLOCK_KEY_PREFIX = "chunkwise/backfill/blocked/"


def cleared_at(instance: dg.DagsterInstance, provider: str) -> float:
    key = CLEAR_KEY_PREFIX + provider
    return float(instance.run_storage.get_cursor_values({key}).get(key) or 0.0)


def clear_provider(instance: dg.DagsterInstance, provider: str) -> list[str]:
    """A person fixed what stopped `provider`: lift its halts now, and its backfill block at the next tick.
    Returns the reasons of the halts lifted."""
    instance.run_storage.set_cursor_values({CLEAR_KEY_PREFIX + provider: str(time.time())})
    lifted = spend_ledger_for(instance.storage_directory()).clear_halts(provider)
    return [h.reason for h in lifted]


def retry_now(instance: dg.DagsterInstance, pipeline: str) -> None:
    """A person wants `pipeline`'s chunks whose run was launched before now and failed (or fails) for a
    retryable reason re-run at the backfill sensor's next tick, not after their backoff (`make demo` run again;
    `python -m sensors.backfill retry-now`). Attempts still count against `max_attempts`."""
    instance.run_storage.set_cursor_values({RETRY_NOW_KEY_PREFIX + pipeline: str(time.time())})


def retry_now_at(instance: dg.DagsterInstance, pipeline: str) -> float:
    key = RETRY_NOW_KEY_PREFIX + pipeline
    return float(instance.run_storage.get_cursor_values({key}).get(key) or 0.0)


def record_block(instance: dg.DagsterInstance, provider: str, block: dict[str, Any]) -> None:
    """Where the other sensors can see the backfill sensor's block (its own state is in its cursor)."""
    instance.run_storage.set_cursor_values({BLOCK_KEY_PREFIX + provider: json.dumps(block)})


def provider_stop(instance: dg.DagsterInstance, provider: str) -> str | None:
    """Why nothing may be launched for `provider` now, or None when it may."""
    for halt in spend_ledger_for(instance.storage_directory()).halts():
        if halt.scope.split("|", 1)[0] == provider:
            return f"{halt.reason}: {halt.message}"
    key = BLOCK_KEY_PREFIX + provider
    raw = instance.run_storage.get_cursor_values({key}).get(key)
    if raw:
        block = json.loads(raw)
        if float(block.get("since", 0.0)) > cleared_at(instance, provider):
            return f"{block.get('reason', 'job-fatal')}: {block.get('message', '')}"
    return None
