"""The Docker sandbox's cost per assignment: the same benchmark-kind assignment run as a forked child (the agent
without Docker) and in a sandbox container (nodeagent/sandbox.py), alternately, in the same run.

    .venv/bin/python bench/sandbox.py [--repeats 5] [--matrix-size 256] [--image hashwork/nodeagent:local]

Needs a Docker engine and the image (`make images`). Prints each kind's median and the container's extra seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def workdir_new(base: Path, payload: dict[str, int]) -> Path:
    workdir = base / f"{uuid.uuid4()}-bench"
    (workdir / "inputs").mkdir(parents=True)
    (workdir / "payload.json").write_text(json.dumps(payload))
    return workdir


def main(argv: list[str] | None = None) -> int:
    from nodeagent import child, sandbox

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="assignments of each kind (default 5)")
    parser.add_argument("--matrix-size", type=int, default=256, help="the benchmark's matrix side (default 256)")
    parser.add_argument("--image", default="hashwork/nodeagent:local", help="the sandbox image")
    args = parser.parse_args(argv)
    problem = sandbox.check(args.image)
    if problem:
        print(f"bench/sandbox.py: the Docker sandbox is not available: {problem}", file=sys.stderr)
        return 1
    payload = {"matrix_size": args.matrix_size, "seed": 1, "index": 0}
    limits = sandbox.Limits(memory_mb=1024, cpus=1.0)
    forks: list[float] = []
    boxes: list[float] = []
    with tempfile.TemporaryDirectory(prefix="hw-bench-sandbox-") as tmp:
        base = Path(tmp)
        for _ in range(args.repeats):
            workdir = workdir_new(base, payload)
            began = time.perf_counter()
            pid = child.fork("benchmark", workdir / "payload.json", workdir, workdir / "runner.log")
            _, status = os.waitpid(pid, 0)
            forks.append(time.perf_counter() - began)
            assert status == 0, (workdir / "runner.log").read_text()
            workdir = workdir_new(base, payload)
            began = time.perf_counter()
            outcome = sandbox.run(
                image=args.image, name=f"hw-bench-{uuid.uuid4().hex[:12]}", workdir=workdir, limits=limits,
                time_limit=120, node_id="bench-sandbox",
                command=sandbox.child_command("benchmark", sandbox.workdir_in_container(workdir)),
            )  # fmt: skip
            boxes.append(time.perf_counter() - began)
            assert outcome.code == 0, outcome.log.decode(errors="replace")
    fork, box = statistics.median(forks), statistics.median(boxes)
    print(f"benchmark {args.matrix_size}² per assignment, median of {args.repeats}, alternating:")
    print(f"  forked child       {fork * 1000:7.0f} ms")
    print(f"  sandbox container  {box * 1000:7.0f} ms   (+{box - fork:.2f} s, {box / fork:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
