"""The LLM resource: providers, shared rate limits, hard budgets, exact cost, the failure taxonomy."""

from resources.llm.batch import BatchCollection, BatchStatus
from resources.llm.batch_journal import BatchHandle, BatchJournal
from resources.llm.budget import BudgetCaps
from resources.llm.errors import ChunkRetryableError, JobFatalError, UnknownModelPriceError
from resources.llm.prices import ModelPrice, PriceTable
from resources.llm.resource import LLMResource
from resources.llm.types import BudgetScope, CallOutcome, ItemResult, ItemUsage, LLMRequest, UsageSummary

__all__ = [
    "BatchCollection",
    "BatchHandle",
    "BatchJournal",
    "BatchStatus",
    "BudgetCaps",
    "BudgetScope",
    "CallOutcome",
    "ChunkRetryableError",
    "ItemResult",
    "ItemUsage",
    "JobFatalError",
    "LLMRequest",
    "LLMResource",
    "ModelPrice",
    "PriceTable",
    "UnknownModelPriceError",
    "UsageSummary",
]
