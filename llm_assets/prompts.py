"""What a stage sends besides the item: its system prompt and output schema, and the prompt version that goes
into every idempotency key (a spec stage's is `StageSpec.prompt_version()`, pipeline_assets.SpecStagePrompt).

The shared instructions (taxonomy, few-shot examples) form the system prompt, byte-identical for every item,
so the provider's prompt cache serves it after the first request; only the item text varies.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class StagePrompt:
    """A stage's fixed instructions and output schema; `version` hashes both."""

    stage: str
    system_prompt: str
    schema: dict
    schema_name: str

    @functools.cached_property
    def version(self) -> str:
        """Read per item by the stages: hashed once (BANKING77's classify prompt is ~15 KB)."""
        body = json.dumps([self.system_prompt, self.schema], sort_keys=True).encode()
        return f"{self.stage}-{hashlib.sha256(body).hexdigest()[:10]}"
