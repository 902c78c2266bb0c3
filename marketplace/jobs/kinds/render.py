"""The `render` kind: a synthetic render spec (synthetic.spec) plus `chunk_size`; one task renders one chunk of
images on a node; replicas agree when synthetic.compare finds their labels identical and their RGB within the
PSNR rule; a completed job's chunks are merged into one COCO dataset. The runner is nodeagent.runners.render."""

from __future__ import annotations

import math
import secrets
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from marketplace.core.exceptions import ValidationFailed
from marketplace.core.queues import TaskName
from marketplace.jobs.kinds.base import SpotCheckedKind, TaskPlan
from protocol import RenderPayload

MAX_CHUNK_SIZE = 256
MAX_UNPACKED_BYTES = 2 * 2**30


@dataclass(frozen=True)
class RenderJobSpec:
    scene: dict[str, Any]
    images: int
    chunk_size: int

    def model_dump(self, *, mode: str = "json") -> dict[str, Any]:
        return {**self.scene, "chunk_size": self.chunk_size}


def parse(spec: dict[str, Any]) -> RenderJobSpec:
    """Validate with synthetic's own schema; every error names its field as spec.<path>."""
    from synthetic import SpecError, validate_spec

    scene = {k: v for k, v in spec.items() if k != "chunk_size"}
    fields: dict[str, list[str]] = {}
    chunk_size = spec.get("chunk_size", 4)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        fields["spec.chunk_size"] = [f"Must be a whole number of images from 1 to {MAX_CHUNK_SIZE}."]
    try:
        parsed = validate_spec(scene)
    except SpecError as exc:
        for path, message in exc.errors:
            fields.setdefault(f"spec.{path}", []).append(message)
        raise ValidationFailed(fields) from None
    if fields:
        raise ValidationFailed(fields)
    normalised = parsed.model_dump(mode="json")
    return RenderJobSpec(scene=normalised, images=int(normalised["images"]), chunk_size=int(chunk_size))


def _unpacked_dir(result: Any) -> Path:
    return Path(settings.MEDIA_ROOT) / "unpacked" / str(result.id)


def chunk_unpack(result: Any) -> Path:
    """The result's chunk, unpacked once under MEDIA_ROOT/unpacked/ (safely: no path may leave the folder)."""
    target = _unpacked_dir(result)
    if (target / "chunk.json").exists():
        return target
    partial = target.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with result.artifact.open("rb") as handle, zipfile.ZipFile(handle) as archive:
            total = 0
            for member in archive.infolist():
                name = Path(member.filename)
                if name.is_absolute() or ".." in name.parts:
                    raise ValueError(f"the archive holds a path outside the chunk: {member.filename}")
                total += member.file_size
                if total > MAX_UNPACKED_BYTES:
                    raise ValueError("the archive unpacks to more than 2 GiB")
            archive.extractall(partial)
    except (zipfile.BadZipFile, OSError) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"the artifact is not a zip of a rendered chunk ({exc})") from exc
    except ValueError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if not (partial / "chunk.json").exists():
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError("the archive has no chunk.json: not a rendered chunk")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def assets_dir(job: Any) -> Path:
    """The job's assets as local files (from the media storage, which may be S3), laid out as the spec names them."""
    root = Path(settings.MEDIA_ROOT) / "cache" / "assets" / str(job.id)
    for asset in job.assets.all():
        target = root / asset.path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with asset.file.open("rb") as source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
    return root


class RenderKind(SpotCheckedKind[Path]):
    name = "render"
    description = "Labeled synthetic images rendered with Blender, in chunks; replicas must agree exactly."
    artifact_max_bytes = 512 * 2**20
    start_window_seconds = 60
    lease_seconds = 600
    time_limit_seconds = 3600
    asset_suffixes = (".glb", ".gltf")
    on_complete = TaskName.RENDER_MERGE

    def parse(self, spec: dict[str, Any]) -> RenderJobSpec:
        return parse(spec)

    def required_assets(self, spec: dict[str, Any]) -> list[str]:
        """The glTF files the spec's catalog refers to: the poster uploads them before the job starts."""
        return sorted(
            {
                str(item["path"])
                for item in spec.get("catalog", [])
                if isinstance(item, dict) and item.get("kind") == "asset"
            }
        )

    def task_count(self, spec: RenderJobSpec) -> int:
        return math.ceil(spec.images / spec.chunk_size)

    def split(self, spec: RenderJobSpec) -> list[TaskPlan]:
        width, height = spec.scene["output"]["resolution"]
        # Blender itself plus a few full-resolution float buffers per image.
        ram_mb = 1024 + math.ceil(width * height * 4 * 4 * 8 / 2**20)
        requirements = {"gpus": 0, "min_vram_mb": 0, "cpu_cores": 1, "ram_mb": ram_mb, "software": ["bpy"]}
        return [
            TaskPlan(
                payload=RenderPayload(
                    spec=spec.scene, start=start, count=min(spec.chunk_size, spec.images - start)
                ).to_json(),
                requirements=requirements,
            )
            for start in range(0, spec.images, spec.chunk_size)
        ]

    def result_value(self, result: Any) -> Path:
        return chunk_unpack(result)

    def agree(self, a: Path, b: Path) -> bool:
        """Two replicas of one chunk agree: identical labels, RGB within synthetic's PSNR rule."""
        from synthetic import compare

        return bool(compare(a, b).ok)

    def explain(self, accepted: Path, value: Path) -> str:
        """How a rejected chunk differs from the accepted one: the first reasons synthetic.compare gives."""
        from synthetic import compare

        return "; ".join(compare(accepted, value).reasons[:3])

    def spot_check(self, task: Any, value: Path) -> tuple[bool, str]:
        """Re-render one random image of the chunk here in full (path-traced with the job's samples, every pass)
        and require its labels to match exactly and its RGB to pass the replicas' PSNR rule: the only replica of
        a trusted node's task is checked on what it is paid for, so a lazy (fewer-samples) render fails."""
        from synthetic import spot_check as rerender

        index = task.payload["start"] + secrets.randbelow(task.payload["count"])
        verdict = rerender(task.payload["spec"], value, index, asset_dir=assets_dir(task.job), full=True)
        if not verdict.ok:
            return False, "; ".join(verdict.reasons[:3])
        scores = ", ".join(f"{db:.1f} dB" if db != float("inf") else "identical" for db in verdict.psnr_db.values())
        return True, f"image {index} re-rendered in full: labels identical, rgb {scores or 'not asked for'}"
