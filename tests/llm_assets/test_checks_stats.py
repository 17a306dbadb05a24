"""The statistics behind the gates: seeded sample, Wilson bound, drift test, top-decile share."""

import math
import random

import pytest

from llm_assets.quality_stats import (
    label_drift,
    population_stability_index,
    reference_agreement,
    sample_item_ids,
    top_decile_share,
    wilson_interval,
    wilson_lower_bound,
)


def test_same_partition_draws_the_same_sample_whatever_the_row_order():
    ids = [f"r{i:07d}" for i in range(250)]
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    first = sample_item_ids(ids, "banking77-d12d6e3b__c00003", 50)
    assert first == sample_item_ids(shuffled, "banking77-d12d6e3b__c00003", 50)
    assert len(first) == 50 and len(set(first)) == 50
    assert first != sample_item_ids(ids, "banking77-d12d6e3b__c00004", 50)  # another chunk, another sample


def test_sample_is_stable_when_one_item_drops_out():
    ids = [f"item-{i}" for i in range(100)]
    before = sample_item_ids(ids, "tiny-1__c00000", 20)
    gone = before[5]
    after = sample_item_ids([i for i in ids if i != gone], "tiny-1__c00000", 20)
    assert set(before) - set(after) == {gone} and len(set(after) - set(before)) == 1


def test_sample_larger_than_the_chunk_takes_every_item():
    assert sorted(sample_item_ids(["a", "b", "c"], "k", 50)) == ["a", "b", "c"]


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), method 3: 81/263 -> 0.2553 .. 0.3662 at 95%.
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_lower_bound(50, 50) > 0.9 and wilson_lower_bound(0, 50) == 0.0


def test_lower_bound_is_below_the_raw_mean_and_tightens_with_n():
    assert wilson_lower_bound(40, 50) < 0.8
    assert wilson_lower_bound(40, 50) < wilson_lower_bound(400, 500) < 0.8


def _draw(rng: random.Random, weights: dict[str, float], n: int) -> dict[str, int]:
    labels = list(weights)
    counts: dict[str, int] = {}
    for label in rng.choices(labels, weights=[weights[x] for x in labels], k=n):
        counts[label] = counts.get(label, 0) + 1
    return counts


def test_drift_flags_a_different_mix_and_not_the_same_mix_with_many_labels():
    rng = random.Random(7)
    labels = {f"intent_{i}": 1.0 + (i % 7) for i in range(77)}
    reference = _draw(rng, labels, 1250)
    same = [label_drift(_draw(rng, labels, 250), reference, seed=str(i)).p_value for i in range(20)]
    shifted_weights = {k: (v * 6 if i < 10 else v) for i, (k, v) in enumerate(labels.items())}
    shifted = label_drift(_draw(rng, shifted_weights, 250), reference)
    assert min(same) > 0.001  # 20 same-mix chunks, none flagged at the default p < 0.001
    assert shifted.p_value == 1 / 2001  # no relabelling of the pooled items comes close
    # PSI alone grows with the label count on small samples: why the gate decides on the p-value.
    assert max(label_drift(_draw(rng, labels, 250), reference).psi for _ in range(5)) > 0.1


def test_drift_catches_disjoint_rare_labels_that_pooling_would_hide():
    # 30 labels seen 1-3 times each, chunk and reference sharing none: every expected count is below 5.
    chunk = {f"b{i}": 1 + i % 3 for i in range(30)}
    reference = {f"a{i}": 2 + i % 3 for i in range(40)}
    assert label_drift(chunk, reference).p_value < 0.001


def test_drift_p_value_is_the_same_on_a_rerun_and_identical_counts_do_not_drift():
    counts = {"a": 50, "b": 30, "c": 20}
    result = label_drift(counts, {k: v * 4 for k, v in counts.items()})
    assert result.chi2 == pytest.approx(0.0) and result.p_value == pytest.approx(1.0)
    mixed = ({"a": 30, "b": 40, "c": 30}, {"a": 200, "b": 120, "c": 80})
    assert label_drift(*mixed, seed="k").p_value == label_drift(*mixed, seed="k").p_value
    assert population_stability_index(counts, counts) == 0.0


def test_drift_without_reference_is_not_flagged():
    assert label_drift({"a": 3}, {}).p_value == 1.0


def test_reference_chunks_of_one_mix_agree_and_chunks_of_a_sorted_input_do_not():
    rng = random.Random(11)
    labels = {f"intent_{i}": 1.0 + (i % 7) for i in range(77)}
    shuffled = [{f"c{c}": _draw(rng, labels, 250) for c in range(5)} for _ in range(20)]
    assert min(reference_agreement(chunks, seed=str(i)) for i, chunks in enumerate(shuffled)) > 0.001
    # An input sorted by label: each chunk holds the next few labels, so the chunks differ from each other.
    names = sorted(labels)
    ordered = {f"c{c}": _draw(rng, {k: 1.0 for k in names[c * 6 : c * 6 + 7]}, 250) for c in range(5)}
    assert reference_agreement(ordered) == 1 / 2001  # the floor: no relabelling comes close
    assert reference_agreement(ordered, seed="k") == reference_agreement(ordered, seed="k")


def test_fewer_than_two_reference_chunks_cannot_disagree():
    assert reference_agreement({}) == 1.0
    assert reference_agreement({"c0": {"a": 3, "b": 1}}) == 1.0
    assert reference_agreement({"c0": {"a": 3}, "c1": {}}) == 1.0


def test_top_decile_share_names_the_items_that_dominate():
    tokens = {f"i{n}": 10 for n in range(18)} | {"huge": 1000, "big": 500}
    share, top = top_decile_share(tokens)
    assert top == ["huge", "big"]
    assert share == pytest.approx(1500 / 1680)
    assert top_decile_share({}) == (0.0, [])
    assert math.isclose(top_decile_share({f"i{n}": 5 for n in range(10)})[0], 0.1)
