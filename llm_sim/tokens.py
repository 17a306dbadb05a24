"""The simulator's one token counter, shared by usage reports, rate limits and prompt caching.

Deterministic and offline (no tokenizer download): a "word" of N characters costs ceil(N/4) tokens,
each punctuation mark one token; whitespace is free.
"""

from __future__ import annotations

import functools
import re

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")

# Per-message framing cost and per-prompt priming cost, as in OpenAI's published counting recipe.
MESSAGE_OVERHEAD_TOKENS = 4
PROMPT_OVERHEAD_TOKENS = 3


@functools.lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """Tokens in `text`: sum of ceil(len(piece)/4) over words and punctuation marks. Memoized: a pipeline sends
    the same system prompt with every request."""
    return sum((len(piece) + 3) // 4 for piece in TOKEN_PATTERN.findall(text))


def truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` (cut after a whole word or mark) that costs at most `max_tokens` tokens."""
    used = 0
    end = 0
    for match in TOKEN_PATTERN.finditer(text):
        cost = (len(match.group()) + 3) // 4
        if used + cost > max_tokens:
            break
        used += cost
        end = match.end()
    return text[:end]
