"""Which Cycles device to render on, decided from the devices Cycles reports (no Blender import here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# OptiX first: on RTX cards it is the faster backend and it renders the same scenes as CUDA.
GPU_BACKENDS: tuple[str, ...] = ("OPTIX", "CUDA")


def choose_device(available: Mapping[str, Sequence[str]], requested: str = "auto") -> tuple[str, list[str]]:
    """(backend, device names) to use: 'NONE' and [] means CPU.

    `available` maps a Cycles backend name to the names of the devices it found; `requested` is 'auto'
    (first GPU backend with a device, else CPU) or 'cpu'.
    """
    if requested == "cpu":
        return "NONE", []
    if requested != "auto":
        raise ValueError(f"device must be 'auto' or 'cpu', not {requested!r}")
    for backend in GPU_BACKENDS:
        names = list(available.get(backend, ()))
        if names:
            return backend, names
    return "NONE", []
