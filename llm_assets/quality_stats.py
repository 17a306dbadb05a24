"""The statistics behind the quality gates: a seeded per-chunk sample, the Wilson bound, and label drift.

Pure functions of plain values (no Dagster, no I/O), so each is pinned by its own unit test.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

# z for a two-sided 95% interval: the lower bound is the 97.5% one-sided bound.
Z_95 = 1.959963984540054


def sample_item_ids(item_ids: Iterable[str], partition_key: str, size: int) -> list[str]:
    """The `size` item ids with the smallest sha256(partition_key|item_id), in that order.

    Seeded by the partition key, so a re-run of the same chunk samples the same items, on any machine
    (no dependence on row order or on Python's hash seed). A bottom-k hash sample is also stable when the
    population changes a little: an item dead-lettered in one run and recovered in the next only swaps itself.
    """
    if size < 0:
        raise ValueError(f"sample size must be >= 0, got {size}")
    unique = set(item_ids)
    ranked = sorted(unique, key=lambda item: hashlib.sha256(f"{partition_key}|{item}".encode()).digest())
    return ranked[:size]


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0.0, 1.0) when n == 0 (nothing is known)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, not rounding noise
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def wilson_lower_bound(successes: int, n: int, z: float = Z_95) -> float:
    """The lower end of the 95% Wilson interval: accuracy is at least this, with ~97.5% confidence."""
    return wilson_interval(successes, n, z)[0]


@dataclass(frozen=True)
class DriftResult:
    """A chunk's label mix against a reference mix.

    `psi` is the population stability index (familiar, but it grows with the number of labels on small
    samples, so it is reported, not gated on). `p_value` comes from a permutation test of the chi-square
    statistic of the 2 x k table: exact in spirit even when most labels are rare (77 intents in 250 items),
    where the chi-square distribution is not to be trusted and pooling rare labels hides the shift.
    """

    psi: float
    chi2: float
    labels: int
    p_value: float
    permutations: int
    chunk_items: int
    reference_items: int
    top_shifts: list[tuple[str, float, float]]
    """Up to 5 labels with the largest share change: (label, chunk share, reference share)."""


def population_stability_index(
    chunk: Mapping[str, int], reference: Mapping[str, int], eps: float = 1e-4
) -> float:
    """PSI = sum (p - q) ln(p / q) over the union of labels; shares below `eps` are floored at `eps`."""
    n, m = sum(chunk.values()), sum(reference.values())
    if n == 0 or m == 0:
        return 0.0
    total = 0.0
    for label in set(chunk) | set(reference):
        p = max(chunk.get(label, 0) / n, eps)
        q = max(reference.get(label, 0) / m, eps)
        total += (p - q) * math.log(p / q)
    return total


def _chi2(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's chi-square of the 2 x k table with rows a and b (columns with no items skipped)."""
    n, m = a.sum(), b.sum()
    col = a + b
    keep = col > 0
    a, b, col = a[keep], b[keep], col[keep]
    grand = n + m
    expected_a, expected_b = col * n / grand, col * m / grand
    return float(((a - expected_a) ** 2 / expected_a).sum() + ((b - expected_b) ** 2 / expected_b).sum())


def label_drift(
    chunk: Mapping[str, int], reference: Mapping[str, int], permutations: int = 2000, seed: str = ""
) -> DriftResult:
    """Compare a chunk's label counts with the pooled counts of reference chunks.

    p-value = (1 + permutations whose chi-square >= the observed one) / (1 + permutations), relabelling the
    pooled items at random; seeded by `seed` (the partition key) so a re-run gives the same answer. The
    smallest p it can report is 1 / (permutations + 1), about 0.0005 by default.
    """
    labels = sorted(set(chunk) | set(reference))
    a = np.array([chunk.get(label, 0) for label in labels], dtype=np.int64)
    b = np.array([reference.get(label, 0) for label in labels], dtype=np.int64)
    n, m = int(a.sum()), int(b.sum())
    shares = [
        (lab, chunk.get(lab, 0) / n if n else 0.0, reference.get(lab, 0) / m if m else 0.0) for lab in labels
    ]
    top = sorted(shares, key=lambda s: -abs(s[1] - s[2]))[:5]
    psi = population_stability_index(chunk, reference)
    if n == 0 or m == 0:
        return DriftResult(psi, 0.0, len(labels), 1.0, 0, n, m, top)
    observed = _chi2(a, b)
    pooled = np.repeat(np.arange(len(labels)), a + b)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    at_least = 0
    for _ in range(permutations):
        rng.shuffle(pooled)
        a_perm = np.bincount(pooled[:n], minlength=len(labels))
        at_least += _chi2(a_perm, a + b - a_perm) >= observed - 1e-9
    p_value = (at_least + 1) / (permutations + 1)
    return DriftResult(psi, observed, len(labels), p_value, permutations, n, m, top)


def top_decile_share(tokens_by_item: Mapping[str, int]) -> tuple[float, list[str]]:
    """Share of all tokens taken by the most expensive 10% of items (at least one), and those items' ids
    (most expensive first). 0.0 and [] when there are no tokens."""
    total = sum(tokens_by_item.values())
    if not tokens_by_item or total <= 0:
        return 0.0, []
    ranked = sorted(tokens_by_item.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[: max(1, len(ranked) // 10)]
    return sum(t for _, t in top) / total, [item for item, _ in top]
