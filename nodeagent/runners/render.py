"""The `render` runner: render one chunk of a synthetic spec with Blender and zip it as the artifact."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

from nodeagent import progress


def run(payload: dict[str, Any], workdir: Path | None = None) -> dict[str, Any]:
    """Render images [start, start + count) of payload["spec"]; the artifact is a zip of the chunk folder."""
    from synthetic import render_chunk

    assert workdir is not None, "the render runner needs a working directory"
    chunk = workdir / "chunk"
    started = time.perf_counter()
    # synthetic runs Blender in a child process of its own: a crash there is a RenderError here.
    # The worker fetched the job's assets (glTF models) into WORKDIR/inputs before starting us.
    count = int(payload["count"])
    progress.report(workdir, 0, count)
    render_chunk(
        payload["spec"],
        int(payload["start"]),
        count,
        chunk,
        asset_dir=workdir / "inputs",
        progress=lambda done: progress.report(workdir, done, count),
    )
    seconds = time.perf_counter() - started
    with zipfile.ZipFile(workdir / "artifact", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(chunk.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(chunk).as_posix())
    return {"images": int(payload["count"]), "start": int(payload["start"]), "seconds": round(seconds, 3)}
