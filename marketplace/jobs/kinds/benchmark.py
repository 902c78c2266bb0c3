"""The `benchmark` kind: seeded float64 matrix products with an exact checksum, to exercise the pipeline and
measure nodes. The runner is nodeagent.runners.benchmark."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from marketplace.jobs.kinds.base import ReplicatedKind, TaskPlan
from protocol import BenchmarkPayload

MAX_MATRIX_SIZE = 4096


class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    tasks: int = Field(ge=1, le=10_000, description="Number of tasks (matrix products).")
    matrix_size: int = Field(ge=8, le=MAX_MATRIX_SIZE, description="Side of the square matrices.")
    seed: int = Field(ge=0, le=2**63 - 1, description="Seed of the matrices; task i uses (seed, i).")


class BenchmarkKind(ReplicatedKind[str]):
    name = "benchmark"
    description = "Seeded float64 matrix products; replicas must report the same checksum."
    spec_model = BenchmarkSpec
    defaults = {"tasks": 4, "matrix_size": 256, "seed": 1}
    artifact_max_bytes = 64 * 1024
    start_window_seconds = 30
    lease_seconds = 120
    time_limit_seconds = 300

    def task_count(self, spec: BenchmarkSpec) -> int:
        return spec.tasks

    def split(self, spec: BenchmarkSpec) -> list[TaskPlan]:
        # Three n×n float64 matrices live at once, plus interpreter overhead.
        ram_mb = math.ceil(3 * spec.matrix_size**2 * 8 / 2**20) + 64
        requirements = {"gpus": 0, "min_vram_mb": 0, "cpu_cores": 1, "ram_mb": ram_mb, "software": []}
        return [
            TaskPlan(
                payload=BenchmarkPayload(matrix_size=spec.matrix_size, seed=spec.seed, index=i).to_json(),
                requirements=requirements,
            )
            for i in range(spec.tasks)
        ]

    def result_value(self, result: Any) -> str:
        """The checksum a node signed: the artifact is the runner's JSON output."""
        with result.artifact.open("rb") as artifact:
            raw = artifact.read(64 * 1024 + 1)
        try:
            checksum = json.loads(raw)["checksum"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError("the artifact is not the benchmark runner's JSON with a checksum") from exc
        if not isinstance(checksum, str) or len(checksum) != 64:
            raise ValueError("the checksum is not a sha256 hex digest")
        return checksum
