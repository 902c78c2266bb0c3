"""Model weights in safetensors: float32 CPU state dicts, with the model name, classes and image size as metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file
from torch import Tensor

from training.models import MODELS, build

MODEL_FORMAT = "hashwork-training-model/1"


@dataclass(frozen=True)
class ModelInfo:
    """What a weights file says about its network."""

    model: str
    classes: list[str]
    image_size: int


def cpu_float_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A detached, contiguous CPU copy of a state dict: floating tensors as float32, others (int buffers) as is."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        t = tensor.detach().to("cpu")
        out[name] = (t.float() if t.is_floating_point() else t).contiguous().clone()
    return out


def save_model(path: str | Path, state: dict[str, Tensor], *, model: str, classes: list[str], image_size: int) -> None:
    """Write `state` (stored as float32 on CPU) with its model name, class names and image size as metadata."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of: {', '.join(sorted(MODELS))}")
    metadata = {
        "format": MODEL_FORMAT,
        "model": model,
        "classes": json.dumps(list(classes)),
        "image_size": str(int(image_size)),
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(cpu_float_state(state), str(tmp), metadata=metadata)
    tmp.replace(out)


def _info(metadata: dict[str, str] | None, where: str) -> ModelInfo:
    if not metadata or metadata.get("format") != MODEL_FORMAT:
        raise ValueError(f"{where}: not a {MODEL_FORMAT} weights file (metadata format is missing or different)")
    try:
        classes = json.loads(metadata["classes"])
        image_size = int(metadata["image_size"])
        model = metadata["model"]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{where}: broken metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or len(classes) < 2:
        raise ValueError(f"{where}: metadata 'classes' must be a JSON list of at least 2 names")
    if model not in MODELS:
        raise ValueError(f"{where}: unknown model {model!r}; choose one of: {', '.join(sorted(MODELS))}")
    return ModelInfo(model=model, classes=classes, image_size=image_size)


def load_model(path: str | Path) -> tuple[dict[str, Tensor], ModelInfo]:
    """Read a weights file written by `save_model`; the state is checked against the named network's layout."""
    where = str(path)
    try:
        with safe_open(where, framework="pt") as st:
            metadata = st.metadata()
            state = {name: st.get_tensor(name) for name in st.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{where}: cannot read safetensors weights ({exc})") from None
    info = _info(metadata, where)
    expected = build(info.model, len(info.classes), info.image_size).state_dict()
    problem = _layout_problem(state, expected)
    if problem:
        raise ValueError(f"{where}: weights do not fit {info.model} with {len(info.classes)} classes: {problem}")
    return state, info


def _layout_problem(state: dict[str, Tensor], expected: dict[str, Tensor]) -> str | None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        return f"missing {missing[:5]}, unexpected {extra[:5]}"
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            return f"{name} has shape {tuple(state[name].shape)}, expected {tuple(ref.shape)}"
    return None


def state_to_bytes(state: dict[str, Tensor]) -> bytes:
    """A state dict as safetensors bytes (float32, CPU)."""
    return bytes(st_save(cpu_float_state(state)))


def state_from_bytes(data: bytes) -> dict[str, Tensor]:
    """The state dict of safetensors bytes (ValueError when they are not safetensors)."""
    try:
        return dict(st_load(bytes(data)))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"not a safetensors state dict ({exc})") from None


def initial_state(model: str, num_classes: int, image_size: int, seed: int) -> dict[str, Tensor]:
    """The initial weights of a network for a seed: the same on every machine, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build(model, num_classes, image_size)
    return cpu_float_state(net.state_dict())
