"""A participant's local training: from the global weights, a number of steps on its shard → the weights delta."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data import CropSet, normalize
from training.models import build

OPTIMIZERS = ("sgd", "adam")
# loss_start/loss_end are measured on at most this many shard crops (a seeded sample), to bound their cost.
LOSS_SAMPLE = 512


@dataclass
class HyperParams:
    """Local optimiser settings; the optimiser's state starts fresh every round (it is not part of the update)."""

    batch_size: int = 32
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not 1 <= self.batch_size <= 65536:
            raise ValueError(f"batch_size must be within 1..65536, got {self.batch_size}")
        if not 0.0 < self.lr <= 10.0:
            raise ValueError(f"lr must be within (0, 10], got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be within [0, 1), got {self.momentum}")
        if not 0.0 <= self.weight_decay < 1.0:
            raise ValueError(f"weight_decay must be within [0, 1), got {self.weight_decay}")


@dataclass
class LocalResult:
    """The update (trained − global, float32 CPU, float entries only) and metrics of one round of local training.

    metrics: loss_start / loss_end (mean cross-entropy on up to 512 shard crops before / after), train_loss (mean of
    the batch losses), samples (crops seen, with repeats), steps, seconds.
    """

    delta: dict[str, Tensor]
    metrics: dict[str, float]


def pick_device() -> str:
    """ "cuda" when a CUDA device is usable, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels for the duration, and no TF32 on CUDA (restores the caller's settings afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    # On CUDA a few kernels have no deterministic version: there we warn rather than fail, and the replay check
    # has a float tolerance. cuDNN convolutions use TF32 (10-bit mantissa) by default on Ampere and later; a
    # replay on the marketplace's CPU would then drift ~1e-3 per operation instead of float32's ~1e-7.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def float_keys(state: dict[str, Tensor]) -> list[str]:
    """The entries of a state dict that form an update: floating-point ones (integer buffers are not averaged)."""
    return [name for name, t in state.items() if t.is_floating_point()]


def batch_order(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Indices of each step's batch: epochs of seeded permutations, concatenated (batches may span two epochs)."""
    pool = torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        while len(pool) < batch_size:
            pool = torch.cat([pool, torch.randperm(n, generator=generator)])
        yield pool[:batch_size]
        pool = pool[batch_size:]


def make_optimizer(params: list[nn.Parameter], hp: HyperParams) -> torch.optim.Optimizer:
    """The local optimiser of `hp` (foreach off: the single-tensor path is the same on every device)."""
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay, foreach=False)
    return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, foreach=False)


@torch.no_grad()
def mean_loss(net: nn.Module, crops: CropSet, indices: Tensor, device: str, batch: int = 256) -> float:
    """Mean cross-entropy of `net` on the crops at `indices`."""
    total = 0.0
    for start in range(0, len(indices), batch):
        idx = indices[start : start + batch]
        x = normalize(crops.images[idx]).to(device)
        y = crops.labels[idx].to(device)
        total += float(F.cross_entropy(net(x), y, reduction="sum"))
    return total / max(1, len(indices))


def train_local(
    model: str,
    num_classes: int,
    image_size: int,
    global_state: dict[str, Tensor],
    shard: CropSet,
    hp: HyperParams,
    steps: int,
    seed: int,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    loss_sample: int = LOSS_SAMPLE,
) -> LocalResult:
    """Train `steps` mini-batch steps from `global_state` on `shard`; return trained − global and the metrics.

    Every random choice (batch order, the loss sample) comes from `seed`, so on CPU the same inputs give a
    bit-identical delta: that is what the marketplace's replay check relies on. loss_start/loss_end are measured on
    `loss_sample` shard crops before and after; with 0 they are the first and the last batch's loss instead (no
    extra forward passes: for one-step calls).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if len(shard) == 0:
        raise ValueError("the shard is empty")
    if shard.image_size != image_size:
        raise ValueError(f"shard crops are {shard.image_size}², the model expects {image_size}²")
    if len(shard.classes) != num_classes:
        raise ValueError(f"shard has {len(shard.classes)} classes, the model {num_classes}")
    started = time.perf_counter()
    with deterministic(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build(model, num_classes, image_size)
        net.load_state_dict(global_state, strict=True)
        net.to(device)
        net.train()
        gen = torch.Generator().manual_seed(seed)
        sample = torch.randperm(len(shard), generator=gen)[:loss_sample].sort().values
        loss_start = mean_loss(net, shard, sample, device) if loss_sample > 0 else math.nan
        optimizer = make_optimizer([p for p in net.parameters() if p.requires_grad], hp)
        losses = 0.0
        for step, idx in enumerate(batch_order(len(shard), hp.batch_size, steps, gen), start=1):
            x = normalize(shard.images[idx]).to(device)
            y = shard.labels[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            torch.autograd.backward(loss)
            optimizer.step()
            batch_loss = float(loss.detach())
            losses += batch_loss
            if step == 1 and loss_sample <= 0:
                loss_start = batch_loss
            if progress is not None:
                progress(step, steps)
        loss_end = mean_loss(net, shard, sample, device) if loss_sample > 0 else batch_loss
        trained = net.state_dict()
        delta = {
            name: trained[name].detach().to("cpu", torch.float32) - global_state[name].to("cpu", torch.float32)
            for name in float_keys(global_state)
        }
    metrics = {
        "loss_start": loss_start,
        "loss_end": loss_end,
        "train_loss": losses / steps,
        "samples": float(steps * hp.batch_size),
        "steps": float(steps),
        "seconds": time.perf_counter() - started,
    }
    return LocalResult(delta=delta, metrics=metrics)
