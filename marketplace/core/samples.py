"""The sample catalog of shelf products, and the demo's sample jobs built from it (one copy for demo and dashboard)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Product kinds a poster picks from (by category); each brings its usual size range and palette.
PRODUCTS: dict[str, dict[str, Any]] = {
    "cereal": {"kind": "carton", "size_m": {"width": [0.15, 0.25], "height": [0.2, 0.3], "depth": [0.05, 0.08]},
               "palette": ["#d62828", "#f7f7f7", "#003049"]},
    "water": {"kind": "bottle", "size_m": {"width": [0.06, 0.09], "height": [0.2, 0.3]},
              "palette": ["#0077b6", "#ffffff"]},
    "soda": {"kind": "can", "size_m": {"width": [0.06, 0.07], "height": [0.11, 0.13]},
             "palette": ["#e63946", "#ffffff"]},
    "jam": {"kind": "jar", "size_m": {"width": [0.07, 0.09], "height": [0.09, 0.12]},
            "palette": ["#6a040f", "#ffba08"]},
    "chips": {"kind": "pouch", "size_m": {"width": [0.12, 0.18], "height": [0.18, 0.25], "depth": [0.03, 0.05]},
              "palette": ["#ffb703", "#023047"]},
}  # fmt: skip


def catalog(categories: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """A render spec's `catalog`: one entry per category (all of them by default), each a COCO category."""
    chosen = PRODUCTS if categories is None else categories
    return [{"category": name, **PRODUCTS[name]} for name in chosen]


# The demo's render job: a small labeled dataset of products on a shelf, 3 chunks on the two local nodes.
SAMPLE_RENDER_JOB: dict[str, Any] = {
    "kind": "render",
    "spec": {
        "catalog": catalog(),
        "scene": {"shelf": {"rows": [2, 3], "width_m": 0.9}},
        "output": {"resolution": [160, 160], "samples": 8},
        "seed": 2026,
        "images": 12,
        "chunk_size": 4,
    },
    "price_per_replica": str(10**18),
    "replication": 2,
}

# Then a train job on that dataset: a small CNN classifying the product crops, in federated rounds on the two nodes.
SAMPLE_TRAIN_SPEC: dict[str, Any] = {
    "model": "smallcnn",
    "image_size": 24,
    "rounds": 4,
    "participants": 2,
    "local_steps": 40,
    "batch_size": 16,
    "learning_rate": 0.05,
    "compression": {"name": "int8"},
    "aggregation": "fedavg",
    "round_deadline_seconds": 120,
    "seed": 2026,
}


def sample_train_job(dataset_job: str) -> dict[str, Any]:
    """The demo's train job on the dataset that render job `dataset_job` produced."""
    return {
        "kind": "train",
        "spec": {**SAMPLE_TRAIN_SPEC, "dataset": {"job": dataset_job}},
        "price_per_replica": str(10**17),
        "replication": 1,
    }
