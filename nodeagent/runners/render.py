"""The `render` runner: render one chunk of a synthetic spec with Blender and zip it as the artifact."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

from nodeagent import progress
from protocol import RenderPayload


def run(payload: dict[str, Any], workdir: Path | None = None) -> dict[str, Any]:
    """Render images [start, start + count) of a protocol.RenderPayload's spec; the artifact is a zip of the chunk."""
    from synthetic import render_chunk

    assert workdir is not None, "the render runner needs a working directory"
    task = RenderPayload.from_json(payload)
    chunk = workdir / "chunk"
    started = time.perf_counter()
    # synthetic runs Blender in a child process of its own: a crash there is a RenderError here.
    # The worker fetched the job's assets (glTF models) into WORKDIR/inputs before starting us.
    count = task.count
    progress.report(workdir, 0, count)
    render_chunk(
        task.spec,
        task.start,
        count,
        chunk,
        asset_dir=workdir / "inputs",
        progress=lambda done: progress.report(workdir, done, count),
    )
    seconds = time.perf_counter() - started
    with zipfile.ZipFile(workdir / "artifact", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(chunk.rglob("*")):
            if path.is_file():
                # PNG data is a deflate stream already: deflating it again only costs CPU (node and verifier).
                how = zipfile.ZIP_STORED if path.suffix == ".png" else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(chunk).as_posix(), compress_type=how)
    return {"images": task.count, "start": task.start, "seconds": round(seconds, 3)}
