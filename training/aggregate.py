"""Aggregation of participants' updates: weighted mean (FedAvg), coordinate-wise median and trimmed mean."""

from __future__ import annotations

import math

import torch
from torch import Tensor

AGGREGATIONS = ("fedavg", "median", "trimmed_mean")


def _check(deltas: list[dict[str, Tensor]], weights: list[float]) -> None:
    if not deltas:
        raise ValueError("no updates to aggregate")
    if len(weights) != len(deltas):
        raise ValueError(f"{len(deltas)} updates but {len(weights)} weights")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    first = deltas[0]
    for n, delta in enumerate(deltas[1:], start=1):
        if set(delta) != set(first):
            raise ValueError(f"update {n} has other layers than update 0")
        for name, t in delta.items():
            if t.shape != first[name].shape:
                raise ValueError(f"update {n}: {name} has shape {tuple(t.shape)}, update 0 {tuple(first[name].shape)}")


def _median(stacked: Tensor) -> Tensor:
    # The mean of the two middle values for an even count (torch.median would return the lower one).
    ordered = stacked.sort(dim=0).values
    n = ordered.shape[0]
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def _trimmed_mean(stacked: Tensor, trim_fraction: float) -> Tensor:
    n = stacked.shape[0]
    cut = math.floor(trim_fraction * n)
    ordered = stacked.sort(dim=0).values
    return ordered[cut : n - cut].mean(dim=0)


def aggregate(
    deltas: list[dict[str, Tensor]], weights: list[float], method: str, trim_fraction: float = 0.2
) -> dict[str, Tensor]:
    """Combine updates layer by layer (float32 CPU results).

    fedavg: Σ wᵢ·Δᵢ / Σ wᵢ (weights are usually shard sizes). median: the coordinate-wise median. trimmed_mean: per
    coordinate, drop the floor(trim_fraction × n) largest and smallest values and average the rest. The robust two
    ignore `weights` (beyond their validation): a weight is something a participant could inflate.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {method!r}; choose one of: {', '.join(AGGREGATIONS)}")
    if not 0.0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be within [0, 0.5), got {trim_fraction}")
    _check(deltas, weights)
    total = float(sum(weights))
    out: dict[str, Tensor] = {}
    for name in deltas[0]:
        stacked = torch.stack([d[name].detach().to("cpu", torch.float32) for d in deltas])
        if method == "fedavg":
            w = torch.tensor([wt / total for wt in weights], dtype=torch.float32)
            out[name] = torch.tensordot(w, stacked, dims=1)
        elif method == "median":
            out[name] = _median(stacked)
        else:
            out[name] = _trimmed_mean(stacked, trim_fraction)
    return out


def apply(state: dict[str, Tensor], delta: dict[str, Tensor], scale: float = 1.0) -> dict[str, Tensor]:
    """A new state: state + scale × delta on every float entry; entries the update does not cover (integer buffers)
    are copied. The delta must cover exactly the state's float entries, with their shapes."""
    floats = {name for name, t in state.items() if t.is_floating_point()}
    if set(delta) != floats:
        missing, extra = sorted(floats - set(delta)), sorted(set(delta) - floats)
        raise ValueError(f"update does not match the state: missing {missing[:5]}, unexpected {extra[:5]}")
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name in delta:
            if delta[name].shape != tensor.shape:
                raise ValueError(f"{name}: update shape {tuple(delta[name].shape)} != state {tuple(tensor.shape)}")
            out[name] = tensor.detach().to("cpu", torch.float32) + scale * delta[name].detach().to("cpu", torch.float32)
        else:
            out[name] = tensor.detach().clone()
    return out
