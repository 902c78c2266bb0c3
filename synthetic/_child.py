"""The render child process: `python -m synthetic._child JOB.json`; exit 0 on success, non-zero on any failure."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

PROGRESS_PREFIX = "@@synthetic-progress "


def main(argv: list[str]) -> int:
    """Run the job file's render; print progress lines on stdout and a readable error on stderr."""
    job = json.loads(Path(argv[0]).read_text())
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".render-", dir=out_dir))
    try:
        from synthetic.blender.run import render_range
        from synthetic.spec import validate_spec

        spec = validate_spec(job["spec"])

        def progress(done: int) -> None:
            print(f"{PROGRESS_PREFIX}{done}", flush=True)

        render_range(
            spec,
            int(job["start"]),
            int(job["count"]),
            out_dir,
            tmp,
            Path(job["asset_dir"]),
            labels_only=bool(job["labels_only"]),
            device=str(job["device"]),
            progress=progress,
        )
    except BaseException as exc:
        traceback.print_exc(file=sys.stderr)
        print(f"render failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
