"""The statistics behind the quality gates: a seeded per-chunk sample, the Wilson bound, label drift and whether
a drift reference is a stable baseline.

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


def _chi2_table(table: np.ndarray) -> float:
    """Pearson's chi-square of an r x k table of counts (rows: samples, columns: labels; empty columns skipped)."""
    table = table[:, table.sum(axis=0) > 0]
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    expected = np.outer(rows, cols) / table.sum()
    return float(((table - expected) ** 2 / expected).sum())


def _chi2(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's chi-square of the 2 x k table with rows a and b (columns with no items skipped)."""
    return _chi2_table(np.vstack([a, b]))


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
    rng = _rng(seed)
    draws = np.empty((permutations, len(labels)), dtype=np.int64)
    for i in range(permutations):
        rng.shuffle(pooled)
        draws[i] = np.bincount(pooled[:n], minlength=len(labels))
    # Every relabelling keeps the column totals c and the row totals n, m, so the 2 x k chi-square is
    # sum((a - n c / N)^2 * N^2 / (n m c)) over the columns with items: one array expression for all draws
    # (the observed table through the same expression, so equal tables compare equal).
    c = a + b
    used = c > 0
    expected = n * c[used] / (n + m)
    weight = (n + m) ** 2 / (n * m * c[used])

    def chi2_rows(rows: np.ndarray) -> np.ndarray:
        return (((rows[..., used] - expected) ** 2) * weight).sum(axis=-1)

    at_least = int((chi2_rows(draws) >= chi2_rows(a) - 1e-9).sum())
    p_value = (at_least + 1) / (permutations + 1)
    return DriftResult(psi, observed, len(labels), p_value, permutations, n, m, top)


def _rng(seed: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))


def reference_agreement(
    chunks: Mapping[str, Mapping[str, int]], permutations: int = 2000, seed: str = ""
) -> float:
    """p-value that the label mixes of `chunks` (name -> label counts) are draws from one mix: a permutation test
    of the chi-square of the chunks x labels table, relabelling the pooled items at random (seeded by `seed`).

    A pooled reference is a baseline only if its chunks agree with each other: chunks of an input sorted or
    grouped by label differ from each other by construction (p near its floor, 1 / (permutations + 1)), and a
    chunk compared with them "drifts" whatever the model does. 1.0 with fewer than two non-empty chunks."""
    names = sorted(name for name, counts in chunks.items() if sum(counts.values()) > 0)
    if len(names) < 2:
        return 1.0
    labels = sorted({label for name in names for label in chunks[name] if chunks[name][label] > 0})
    table = np.array([[chunks[name].get(label, 0) for label in labels] for name in names], dtype=np.int64)
    # Row and column totals are the same for every relabelling, so the expected counts are computed once.
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    observed = float(((table - expected) ** 2 / expected).sum())
    pooled = np.repeat(np.arange(len(labels)), table.sum(axis=0))
    row_of = np.repeat(np.arange(len(names)), table.sum(axis=1)) * len(
        labels
    )  # each slot's row, as an offset
    rng = _rng(seed)
    at_least = 0
    for _ in range(permutations):
        rng.shuffle(pooled)
        shuffled = np.bincount(row_of + pooled, minlength=table.size).reshape(table.shape)
        at_least += float(((shuffled - expected) ** 2 / expected).sum()) >= observed - 1e-9
    return (at_least + 1) / (permutations + 1)


def top_decile_share(tokens_by_item: Mapping[str, int]) -> tuple[float, list[str]]:
    """Share of all tokens taken by the most expensive 10% of items (at least one), and those items' ids
    (most expensive first). 0.0 and [] when there are no tokens."""
    total = sum(tokens_by_item.values())
    if not tokens_by_item or total <= 0:
        return 0.0, []
    ranked = sorted(tokens_by_item.items(), key=lambda kv: (-kv[1], kv[0]))
    top = ranked[: max(1, len(ranked) // 10)]
    return sum(t for _, t in top) / total, [item for item, _ in top]
