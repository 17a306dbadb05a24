"""The routing rule of the cascade: which classified items the stronger (dearer) model sees.

Classification is cheap and runs on everything; enrichment runs only where it pays: by default on items the
classifier was unsure of. `all` routes every item (no cascade), `none` routes nothing.
"""

from __future__ import annotations

import pandas as pd

from llm_assets.settings import PipelineSettings


def select_for_enrichment(classified: pd.DataFrame, settings: PipelineSettings) -> list[str]:
    """Item ids of `classified` (columns item_id, label, confidence) that the rule sends to `enriched`."""
    if classified.empty or settings.route == "none":
        return []
    if settings.route == "all":
        chosen = pd.Series(True, index=classified.index)
    else:
        low = classified["confidence"].astype(float) < settings.route_confidence_below
        labelled = classified["label"].isin(settings.route_labels)
        chosen = {"low_confidence": low, "labels": labelled, "low_confidence_or_labels": low | labelled}[
            settings.route
        ]
    return classified.loc[chosen, "item_id"].astype(str).tolist()
