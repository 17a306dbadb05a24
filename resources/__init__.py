"""How the outside world is reached: the LLM resource (limits, budgets, pricing, providers) and stores."""

from resources.llm import (
    BudgetScope,
    CallOutcome,
    ChunkRetryableError,
    ItemResult,
    ItemUsage,
    JobFatalError,
    LLMRequest,
    LLMResource,
    UsageSummary,
)

__all__ = [
    "BudgetScope",
    "CallOutcome",
    "ChunkRetryableError",
    "ItemResult",
    "ItemUsage",
    "JobFatalError",
    "LLMRequest",
    "LLMResource",
    "UsageSummary",
]
