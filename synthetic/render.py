"""Parent side of rendering: run Blender in a child process per chunk, and spot-check one image (its labels, or
in full)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthetic.compare import Verdict, compare_labels
from synthetic.spec import validate_spec
from synthetic.zipchunk import ZipRoot

_MESA_EGL = Path("/usr/share/glvnd/egl_vendor.d/50_mesa.json")


class RenderError(RuntimeError):
    """The render child failed; the message carries the end of its stderr."""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Label passes must be bit-identical on every node, so the Workbench rasteriser is pinned to Mesa's
    # software llvmpipe even where an NVIDIA EGL driver exists (Cycles' CUDA/OptiX does not go through EGL).
    if _MESA_EGL.is_file():
        env.setdefault("__EGL_VENDOR_LIBRARY_FILENAMES", str(_MESA_EGL))
    env.setdefault("LIBGL_ALWAYS_SOFTWARE", "1")
    env.setdefault("GALLIUM_DRIVER", "llvmpipe")
    return env


def _run_child(job: dict[str, Any], progress: Callable[[int], None] | None) -> None:
    from synthetic._child import PROGRESS_PREFIX

    with tempfile.TemporaryDirectory(prefix="synthetic-job-") as jobs:
        job_file = Path(jobs) / "job.json"
        job_file.write_text(json.dumps(job))
        with tempfile.TemporaryFile(mode="w+") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "synthetic._child", str(job_file)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=_child_env(),
            )
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    if line.startswith(PROGRESS_PREFIX) and progress is not None:
                        progress(int(line[len(PROGRESS_PREFIX) :]))
                code = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                # A child killed hard cannot clean up after itself.
                for leftover in Path(job["out_dir"]).glob(".render-*"):
                    shutil.rmtree(leftover, ignore_errors=True)
            if code != 0:
                stderr.seek(0)
                tail = "\n".join(stderr.read().strip().splitlines()[-15:])
                raise RenderError(f"render child exited with code {code}:\n{tail}")


def render_chunk(
    spec_dict: dict[str, Any],
    start: int,
    count: int,
    out_dir: str | Path,
    *,
    asset_dir: str | Path | None = None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> None:
    """Render images [start, start+count) of the spec into `out_dir` (chunk layout) in a Blender child process.

    `asset_dir` is where the spec's glTF paths are resolved (default: the working directory); `device` is 'auto'
    (CUDA/OptiX when present, else CPU) or 'cpu'; `progress` gets the number of images done. Raises `SpecError`
    for a bad spec, `ValueError` for a bad range, and `RenderError` when the child fails.
    """
    spec = validate_spec(spec_dict)
    if count < 1 or start < 0 or start + count > spec.images:
        raise ValueError(f"images [{start}, {start + count}) outside the spec's [0, {spec.images})")
    job = {
        "spec": spec.model_dump(mode="json"),
        "start": start,
        "count": count,
        "out_dir": str(Path(out_dir).resolve()),
        "asset_dir": str(Path(asset_dir or Path.cwd()).resolve()),
        "labels_only": False,
        "device": device,
    }
    _run_child(job, progress)


def spot_check(
    spec_dict: dict[str, Any],
    chunk_dir: str | Path | ZipRoot,
    image_index: int,
    *,
    asset_dir: str | Path | None = None,
    full: bool = False,
) -> Verdict:
    """Re-render image `image_index` here, on the CPU, and compare it with the chunk's: by default the label passes
    only (Workbench, no path tracing), exactly; with `full`, RGB too, path-traced with the spec's own samples and
    held to the replicas' PSNR rule (RGB_MIN_PSNR_DB), so a render with fewer samples fails; it costs the render
    time of one image (docs/synthetic.md, "Verification")."""
    spec = validate_spec(spec_dict)
    with tempfile.TemporaryDirectory(prefix="synthetic-spot-") as tmp:
        job = {
            "spec": spec.model_dump(mode="json"),
            "start": image_index,
            "count": 1,
            "out_dir": tmp,
            "asset_dir": str(Path(asset_dir or Path.cwd()).resolve()),
            "labels_only": not full,
            "device": "cpu",
        }
        _run_child(job, None)
        reference = chunk_dir if isinstance(chunk_dir, ZipRoot) else Path(chunk_dir)
        return compare_labels(reference, Path(tmp), [image_index], rgb=full)
