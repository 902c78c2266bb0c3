"""What this machine offers: NVIDIA GPUs through NVML, CPU cores, RAM, free disk, and the ML software present."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

SOFTWARE = ("torch", "bpy", "numpy")


def _gpus() -> tuple[list[dict[str, Any]], str | None]:
    """The NVIDIA GPUs NVML reports, or ([], why there are none)."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA driver found ({exc})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpu: dict[str, Any] = {
                "index": index,
                "name": pynvml.nvmlDeviceGetName(handle),
                "vram_mb": int(memory.total // 2**20),
                "driver": driver,
                "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
            }
            try:
                gpu["temperature_c"] = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
            except pynvml.NVMLError:
                gpu["temperature_c"] = None
            try:
                gpu["power_limit_w"] = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000
            except pynvml.NVMLError:
                gpu["power_limit_w"] = None
            gpus.append(gpu)
        return gpus, None if gpus else "the NVIDIA driver reports no GPU"
    finally:
        pynvml.nvmlShutdown()


def ram_mb() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)


def _software() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in SOFTWARE:
        if importlib.util.find_spec(name) is None:
            found[name] = None
            continue
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "unknown"
    return found


def sandbox_report(image: str) -> dict[str, Any]:
    """Whether assignments can run in the Docker sandbox (nodeagent.sandbox) with IMAGE, and if not why."""
    from nodeagent import sandbox

    problem = sandbox.check(image)
    return {"available": problem is None, "image": image, "reason": problem or ""}


def probe(work_dir: Path | None = None, *, sandbox_image: str | None = None) -> dict[str, Any]:
    """The capabilities the agent reports to the marketplace at enrolment and in heartbeats. With SANDBOX_IMAGE it
    also says whether the Docker sandbox can run it (`sandbox`; protocol.Capabilities has no such field, so the
    marketplace drops it, as it drops every field it does not know)."""
    gpus, no_gpu = _gpus()
    disk = shutil.disk_usage(work_dir or Path.home())
    found: dict[str, Any] = {
        "gpus": gpus,
        "no_gpu_reason": no_gpu,
        "cpu_cores": os.cpu_count() or 1,
        "ram_mb": ram_mb(),
        "disk_free_mb": disk.free // 2**20,
        "software": _software(),
    }
    if sandbox_image is not None:
        found["sandbox"] = sandbox_report(sandbox_image)
    return found


def gpu_temperatures() -> list[int]:
    gpus, _ = _gpus()
    return [g["temperature_c"] for g in gpus if g.get("temperature_c") is not None]


def apply_power_cap(watts: int) -> list[str]:
    """Set the power limit of every GPU (needs root); returns one line per GPU saying what happened."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return [f"no NVIDIA GPU found ({exc}): --power-cap does nothing here"]
    lines = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            try:
                low, high = pynvml.nvmlDeviceGetPowerManagementLimitConstraints(handle)
                target = max(low, min(high, watts * 1000))
                pynvml.nvmlDeviceSetPowerManagementLimit(handle, target)
                lines.append(f"GPU {index}: power limit set to {target / 1000:.0f} W")
            except pynvml.NVMLError as exc:
                lines.append(f"GPU {index}: could not set the power limit ({exc}); run as root to allow it")
        return lines or ["no NVIDIA GPU found: --power-cap does nothing here"]
    finally:
        pynvml.nvmlShutdown()


def describe(capabilities: dict[str, Any]) -> str:
    """Human-readable probe output."""
    lines = []
    if capabilities["gpus"]:
        for gpu in capabilities["gpus"]:
            temp = f", {gpu['temperature_c']} °C" if gpu.get("temperature_c") is not None else ""
            lines.append(
                f"GPU {gpu['index']}: {gpu['name']}, {gpu['vram_mb']} MiB VRAM, driver {gpu['driver']}, "
                f"CUDA {gpu['cuda']}{temp}"
            )
    else:
        lines.append(f"GPUs: none ({capabilities['no_gpu_reason']}); this node can take CPU work only")
    lines.append(f"CPU cores: {capabilities['cpu_cores']}")
    lines.append(f"RAM: {capabilities['ram_mb']} MiB")
    lines.append(f"Free disk: {capabilities['disk_free_mb']} MiB")
    for name, version in capabilities["software"].items():
        lines.append(f"{name}: {version or 'not installed'}")
    box = capabilities.get("sandbox")
    if box is not None:
        lines.append(
            f"Sandbox: docker available ({box['image']}): each assignment runs in its own container"
            if box["available"]
            else f"Sandbox: docker unavailable ({box['reason']}); assignments would run in a forked child, unsandboxed"
        )
    return "\n".join(lines)
