"""The ONE token estimator. No tokenizer download: words and punctuation, a token per 4 characters of each.

It is deliberately the same algorithm the local simulator counts with, so against the simulator estimates are
exact; against real providers it is an approximation, which is why budget reservations add a safety margin and
every reservation is reconciled with the usage the provider reports.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence

_PIECES = re.compile(r"\w+|[^\w\s]")

# Chat framing overhead, in tokens: per message and per request.
PER_MESSAGE_TOKENS = 4
PER_REQUEST_TOKENS = 3
# Budget reservations assume the provider counts up to this much more than we estimate.
RESERVATION_MARGIN = 1.10
RESERVATION_MARGIN_TOKENS = 16


@functools.lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """Tokens in one string: sum over words/punctuation of ceil(len/4).

    Cached: every request of a stage repeats the same system prompt (taxonomy and few-shot examples, ~5,000
    tokens), which otherwise cost more CPU to count than the rest of the request."""
    return sum(math.ceil(len(m) / 4) for m in _PIECES.findall(text))


def estimate_prompt_tokens(message_texts: Sequence[str], schema: dict | None = None) -> int:
    """Prompt tokens of a chat request: each message's content plus framing, plus the schema when it is sent
    as a request parameter (json_schema / json_object modes)."""
    total = sum(count_tokens(t) + PER_MESSAGE_TOKENS for t in message_texts) + PER_REQUEST_TOKENS
    if schema is not None:
        total += count_tokens(json.dumps(schema))
    return total


def conservative_input_tokens(estimate: int) -> int:
    """The input size budgets reserve: the estimate plus a safety margin (tokens)."""
    return math.ceil(estimate * RESERVATION_MARGIN) + RESERVATION_MARGIN_TOKENS
