"""Prompt-prefix cache with each provider's reporting rules.

OpenAI (automatic): the longest previously seen prefix, in steps of 128 tokens, counts as cached when it
reaches `min_tokens`. Anthropic (explicit): prefixes end at blocks carrying `cache_control`; the longest one seen
is a cache read, the rest up to the last breakpoint a cache write. Entries live `ttl_s` seconds after last use.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from dataclasses import dataclass, field

from llm_sim.prompt import Prompt
from llm_sim.tokens import MESSAGE_OVERHEAD_TOKENS, TOKEN_PATTERN

OPENAI_CACHE_STEP_TOKENS = 128


@dataclass
class CachePlan:
    """What a request would read from and write to the cache (tokens); `commit` stores it on success."""

    read_tokens: int = 0
    write_tokens: int = 0
    write_ttl_s: float = 300.0
    keys: list[tuple[str, float]] = field(default_factory=list)


class PromptCache:
    def __init__(self, ttl_s: float, min_tokens: int):
        self.ttl_s = ttl_s
        self.min_tokens = min_tokens
        self._expires: dict[str, float] = {}

    def clear(self) -> None:
        self._expires.clear()

    def _alive(self, key: str, now: float) -> bool:
        expires = self._expires.get(key)
        return expires is not None and expires > now

    def plan(self, prompt: Prompt, now: float) -> CachePlan:
        if prompt.provider == "openai":
            return self._plan_openai(prompt, now)
        return self._plan_anthropic(prompt, now)

    def commit(self, plan: CachePlan, now: float) -> None:
        for key, ttl in plan.keys:
            self._expires[key] = max(self._expires.get(key, 0.0), now + ttl)
        if len(self._expires) > 200_000:  # bound memory in long demos
            for key in [k for k, t in self._expires.items() if t <= now]:
                del self._expires[key]

    def _plan_openai(self, prompt: Prompt, now: float) -> CachePlan:
        """A checkpoint every OPENAI_CACHE_STEP_TOKENS tokens of the prompt (from `min_tokens` on): the digest of
        the prompt up to the token piece that crosses the step. The digest covers each piece followed by \\x01;
        SHA-256 is streamed, so hashing the pieces between two crossings at once gives the same digest."""
        digest = hashlib.sha256(f"openai\x00{prompt.model}".encode())
        total = 0
        step = 0
        checkpoints: list[tuple[str, int]] = []
        for seg in prompt.segments:
            if seg.message_start:
                digest.update(b"\x02" + seg.role.encode() + b"\x02")
                total += MESSAGE_OVERHEAD_TOKENS
            joined, ends, cumulative = _pieces(seg.text)
            hashed = 0
            while True:
                # the first piece after which the running total reaches the next step
                i = bisect.bisect_left(cumulative, (step + 1) * OPENAI_CACHE_STEP_TOKENS - total)
                if i == len(cumulative):
                    break
                digest.update(joined[hashed : ends[i]])
                hashed = ends[i]
                step = (total + cumulative[i]) // OPENAI_CACHE_STEP_TOKENS
                if step * OPENAI_CACHE_STEP_TOKENS >= self.min_tokens:
                    checkpoints.append((digest.copy().hexdigest(), step * OPENAI_CACHE_STEP_TOKENS))
            digest.update(joined[hashed:])
            total += cumulative[-1] if cumulative else 0
        read = max((tokens for key, tokens in checkpoints if self._alive(key, now)), default=0)
        longest = checkpoints[-1][1] if checkpoints else 0
        return CachePlan(
            read_tokens=read,
            write_tokens=max(0, longest - read),
            write_ttl_s=self.ttl_s,
            keys=[(key, self.ttl_s) for key, _ in checkpoints],
        )

    def _plan_anthropic(self, prompt: Prompt, now: float) -> CachePlan:
        digest = hashlib.sha256(f"anthropic\x00{prompt.model}".encode())
        total = 0
        breakpoints: list[tuple[str, int, float]] = []
        for seg in prompt.segments:
            if seg.message_start:
                digest.update(b"\x02" + seg.role.encode() + b"\x02")
                total += MESSAGE_OVERHEAD_TOKENS
            digest.update(seg.text.encode() + b"\x01")
            total += sum((len(p) + 3) // 4 for p in TOKEN_PATTERN.findall(seg.text))
            if seg.cache_control and total >= self.min_tokens:
                ttl = 3600.0 if seg.cache_control.get("ttl") == "1h" else self.ttl_s
                breakpoints.append((digest.copy().hexdigest(), total, ttl))
        if not breakpoints:
            return CachePlan()
        read = max((tokens for key, tokens, _ in breakpoints if self._alive(key, now)), default=0)
        last_tokens, last_ttl = breakpoints[-1][1], breakpoints[-1][2]
        return CachePlan(
            read_tokens=read,
            write_tokens=max(0, last_tokens - read),
            write_ttl_s=last_ttl,
            keys=[(key, ttl) for key, _, ttl in breakpoints],
        )


@functools.lru_cache(maxsize=1024)
def _pieces(text: str) -> tuple[bytes, list[int], list[int]]:
    """`text`'s token pieces each followed by \\x01, joined; each piece's end offset in those bytes; the tokens
    counted up to and including each piece. Memoized: the system prompt is the same in every request."""
    parts: list[bytes] = []
    ends: list[int] = []
    cumulative: list[int] = []
    offset = tokens = 0
    for piece in TOKEN_PATTERN.findall(text):
        encoded = piece.encode() + b"\x01"
        parts.append(encoded)
        offset += len(encoded)
        tokens += (len(piece) + 3) // 4
        ends.append(offset)
        cumulative.append(tokens)
    return b"".join(parts), ends, cumulative
