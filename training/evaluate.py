"""Evaluation on a crop set (accuracy, loss) and prediction of single images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from training.data import CropSet, normalize
from training.models import build


def load_net(model: str, num_classes: int, image_size: int, state: dict[str, Tensor], device: str = "cpu") -> nn.Module:
    """The network of `model` with `state` loaded, in eval mode on `device`."""
    net = build(model, num_classes, image_size)
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


@torch.no_grad()
def logits_of(net: nn.Module, images: Tensor, device: str = "cpu", batch: int = 256) -> Tensor:
    """Logits (float32 CPU) of uint8 crops [N, 3, S, S], in batches."""
    outs = [net(normalize(images[s : s + batch]).to(device)).float().cpu() for s in range(0, len(images), batch)]
    return torch.cat(outs) if outs else torch.zeros(0)


def evaluate(
    model: str, num_classes: int, image_size: int, state: dict[str, Tensor], crops: CropSet, device: str = "cpu"
) -> dict[str, float]:
    """accuracy (0..1), loss (mean cross-entropy) and samples of `state` on `crops`."""
    if len(crops) == 0:
        raise ValueError("cannot evaluate on an empty crop set")
    if crops.image_size != image_size or len(crops.classes) != num_classes:
        have = f"{crops.image_size}², {len(crops.classes)} classes"
        raise ValueError(f"crops ({have}) do not fit the model ({image_size}², {num_classes} classes)")
    logits = logits_of(load_net(model, num_classes, image_size, state, device), crops.images, device)
    loss = float(F.cross_entropy(logits, crops.labels))
    accuracy = float((logits.argmax(dim=1) == crops.labels).float().mean())
    return {"accuracy": accuracy, "loss": loss, "samples": float(len(crops))}


def image_tensor(path: str | Path, image_size: int) -> Tensor:
    """An image file as one uint8 crop [3, S, S]: the whole picture, resized (bilinear) to `image_size`²."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())


def predict(
    model: str, classes: list[str], image_size: int, state: dict[str, Tensor], images: Tensor, device: str = "cpu"
) -> list[tuple[str, float]]:
    """(class name, softmax confidence) of each uint8 crop in `images` [N, 3, S, S]."""
    logits = logits_of(load_net(model, len(classes), image_size, state, device), images, device)
    probs = torch.softmax(logits, dim=1)
    confidence, label = probs.max(dim=1)
    return [(classes[int(k)], float(c)) for k, c in zip(label, confidence, strict=True)]
