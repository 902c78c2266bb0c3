"""The `render` kind: a synthetic render spec (synthetic.spec) plus `chunk_size`; one task renders one chunk of
images on a node; replicas agree when synthetic.compare finds their labels identical and their RGB within the
PSNR rule; a completed job's chunks are merged into one COCO dataset. The runner is nodeagent.runners.render."""

from __future__ import annotations

import math
import secrets
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from marketplace.core.exceptions import ValidationFailed
from marketplace.core.queues import TaskName
from marketplace.jobs.kinds.base import SpotCheckedKind, TaskPlan
from protocol import RenderPayload
from synthetic.zipchunk import ZIP_ERRORS, Opener, ZipRoot

MAX_CHUNK_SIZE = 256
MAX_UNPACKED_BYTES = 2 * 2**30
# Per pixel of an image, over every pass stored raw: rgb 3, instance/category/depth 2 each, normals 6.
BYTES_PER_PIXEL = 15
# A member may unpack to at most MAX_RATIO × its compressed bytes once past MAX_RATIO_FLOOR bytes: honest PNGs
# are compressed already (≈1×), JSON ≈5–10×; deflate reaches ≈1000× only on data made to be a bomb.
MAX_RATIO = 200
MAX_RATIO_FLOOR = 2**20
# Honest names are like "instance/00000012.png"; a long one could only fail as a file name here.
MAX_NAME = 128


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


@dataclass(frozen=True)
class ZipLimits:
    """What a chunk's zip may hold, from its task: entries, central directory bytes, bytes unpacked (in all and
    per member)."""

    entries: int
    directory_bytes: int
    unpacked_bytes: int
    member_bytes: int


def zip_limits(payload: dict[str, Any]) -> ZipLimits:
    """Bounds for the zip of a task's chunk (payload: spec, start, count). An honest chunk holds, per image, one
    PNG per pass and a metadata JSON, plus chunk.json and annotations.json: entries are capped at twice that,
    plus a few; a PNG is at most its raw pixels (15 bytes a pixel over every pass) and the JSON files a few
    hundred kilobytes an image, so twice that is the cap on bytes unpacked, never above MAX_UNPACKED_BYTES. One
    member is at most the larger of a 16-bit RGB PNG stored raw and 1 MiB of JSON per image: the verifier loads a
    JSON file whole."""
    from synthetic.chunk import PASS_DIRS

    output = payload.get("spec", {}).get("output", {})
    width, height = output.get("resolution", (8192, 8192))
    images = int(payload.get("count", MAX_CHUNK_SIZE))
    entries = images * (len(PASS_DIRS) + 1) * 2 + 16
    per_image = width * height * BYTES_PER_PIXEL + 2**20
    # A stored PNG: 6 bytes a pixel, a filter byte a row, a few bytes per deflate block and chunk.
    png = width * height * 6 * 102 // 100 + height + 2**16
    return ZipLimits(
        entries=entries,
        directory_bytes=entries * 512,
        unpacked_bytes=min(MAX_UNPACKED_BYTES, 2 * images * per_image + 16 * 2**20),
        member_bytes=max(png, (images + 1) * 2**20),
    )


def _zip_check(handle: Any, limits: ZipLimits) -> None:
    """Refuse, from the end-of-central-directory record alone, a zip with more entries or a bigger central
    directory than `limits` allow: zipfile would otherwise read all of it into memory (millions of entries:
    gigabytes) before any other check could run."""
    # zipfile's own reader of that record (zip64 included): private, but the one ZipFile itself uses.
    end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]
    if end is None:
        raise ValueError("the artifact is not a zip file (no end-of-central-directory record)")
    entries, directory = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > limits.entries or directory > limits.directory_bytes:
        raise ValueError(
            f"the archive declares {entries} entries in a {directory}-byte directory; a chunk has at most "
            f"{limits.entries} entries ({limits.directory_bytes} bytes)"
        )
    handle.seek(0)


def _members_check(archive: zipfile.ZipFile, limits: ZipLimits) -> None:
    members = archive.infolist()
    if len(members) > limits.entries:
        raise ValueError(f"the archive holds {len(members)} entries; a chunk has at most {limits.entries}")
    total = 0
    for member in members:
        name = Path(member.filename)
        if len(member.filename) > MAX_NAME or name.is_absolute() or ".." in name.parts or "\\" in member.filename:
            raise ValueError(f"the archive holds a path outside the chunk (or too long): {member.filename[:100]!r}")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise ValueError(f"the archive holds a symbolic link: {member.filename[:100]!r}")
        if member.file_size > MAX_RATIO_FLOOR and member.file_size > MAX_RATIO * member.compress_size:
            raise ValueError(
                f"{member.filename[:100]!r} unpacks {member.file_size} bytes from {member.compress_size}: "
                f"more than {MAX_RATIO}× (a zip bomb)"
            )
        if member.file_size > limits.member_bytes:
            raise ValueError(
                f"{member.filename[:100]!r} unpacks to {member.file_size} bytes; a chunk's files are at most "
                f"{limits.member_bytes}"
            )
        total += member.file_size
        if total > limits.unpacked_bytes:
            raise ValueError(f"the archive unpacks to more than {limits.unpacked_bytes} bytes, more than a chunk")


# What a broken or hostile zip raises inside zipfile: its data is the node's, so these are the node's errors.
_ZIP_ERRORS = ZIP_ERRORS


def _opener(result: Any) -> Opener:
    """A new binary handle on the result's artifact at each call: from its storage when it has one (a Django
    FieldFile's own open() reopens one shared file object), else from the artifact's open()."""
    artifact = result.artifact
    storage, name = getattr(artifact, "storage", None), getattr(artifact, "name", None)
    if storage is not None and name:
        return lambda: storage.open(name, "rb")
    return lambda: artifact.open("rb")


def _layout_check(members: list[zipfile.ZipInfo]) -> frozenset[str]:
    """The archive's file names, once each is canonical (no empty or "." part: unpacking would have renamed it) and
    none is also a folder of another name (unpacking could not have made both): what a folder holds, it can be."""
    files = {m.filename for m in members if not m.is_dir()}
    folders = {m.filename.rstrip("/") for m in members if m.is_dir()}
    for name in files:
        parts = name.split("/")
        if any(part in ("", ".") for part in parts):
            raise ValueError(f"the archive holds a path that is not canonical: {name[:100]!r}")
        folders.update("/".join(parts[:k]) for k in range(1, len(parts)))
    clash = sorted(files & folders)
    if clash:
        raise ValueError(f"the archive holds {clash[0][:100]!r} both as a file and as a folder")
    return frozenset(files)


def chunk_open(result: Any) -> ZipRoot:
    """The result's chunk read in place from its zip (nothing unpacked), once the zip is within the bounds of its
    task (`zip_limits`: entries counted before the central directory is read, each member's compression ratio and
    the total unpacked capped, no path leaving the chunk, no symbolic link), every member inflates to its declared
    size with the right CRC (read through, not kept), and a chunk.json is there. A malformed or hostile zip is a
    ValueError naming the problem; the marketplace's own trouble (its storage) is not."""
    from marketplace.jobs.faults import RESOURCE_ERRNOS, VerifierUnavailable

    limits = zip_limits(result.assignment.task.payload)
    opener = _opener(result)
    try:
        handle = opener()
    except OSError as exc:
        raise VerifierUnavailable(f"the artifact of result {result.id} cannot be read from storage ({exc})") from exc
    try:
        with handle:
            _zip_check(handle, limits)
            with zipfile.ZipFile(handle) as archive:
                _members_check(archive, limits)
                # testzip reads each member through in small blocks: what extracting it would have proven.
                broken = archive.testzip()
                if broken is not None:
                    raise ValueError(f"{broken[:100]!r} does not inflate to its CRC")
                names = _layout_check(archive.infolist())
    except _ZIP_ERRORS as exc:
        raise ValueError(f"the artifact is not a zip of a rendered chunk ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        if exc.errno in RESOURCE_ERRNOS:
            raise
        raise ValueError(f"the archive cannot be read as a chunk ({type(exc).__name__}: {exc})") from exc
    if "chunk.json" not in names:
        raise ValueError("the archive has no chunk.json: not a rendered chunk")
    return ZipRoot(opener, names, label=str(result.id))


def chunk_unpack(result: Any) -> Path:
    """For tools that want files (the verifier reads in place: `chunk_open`): the result's chunk, unpacked once
    under MEDIA_ROOT/unpacked/<result id> (idempotent), within the same bounds as `chunk_open`. A malformed or
    hostile zip is a ValueError naming the problem; the marketplace's own trouble (its storage, a full disk) is
    not."""
    from marketplace.jobs.faults import RESOURCE_ERRNOS, VerifierUnavailable

    target = _unpacked_dir(result)
    if (target / "chunk.json").exists():
        return target
    limits = zip_limits(result.assignment.task.payload)
    try:
        handle = result.artifact.open("rb")
    except OSError as exc:
        raise VerifierUnavailable(f"the artifact of result {result.id} cannot be read from storage ({exc})") from exc
    # A folder of its own: two verify runs unpacking the same result never write into each other's.
    partial = target.with_name(f"{target.name}.partial-{secrets.token_hex(4)}")
    try:
        partial.mkdir(parents=True)
        with handle:
            _zip_check(handle, limits)
            with zipfile.ZipFile(handle) as archive:
                _members_check(archive, limits)
                archive.extractall(partial)
        if not (partial / "chunk.json").is_file():
            raise ValueError("the archive has no chunk.json: not a rendered chunk")
        try:
            partial.rename(target)
        except OSError:
            if not (target / "chunk.json").exists():
                raise
            # Another verify run unpacked the same result first: its folder holds the same chunk.
    except _ZIP_ERRORS as exc:
        raise ValueError(f"the artifact is not a zip of a rendered chunk ({type(exc).__name__}: {exc})") from exc
    except OSError as exc:
        if exc.errno in RESOURCE_ERRNOS:
            raise  # the marketplace's disk: not the node's fault
        # A name that cannot be a file here, a file where the archive wants a folder, a seek to nowhere.
        raise ValueError(f"the archive cannot be unpacked as a chunk ({type(exc).__name__}: {exc})") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def chunk_discard(result: Any) -> None:
    """Remove what chunk_unpack left of a result (an older marketplace unpacked every chunk it verified)."""
    target = _unpacked_dir(result)
    shutil.rmtree(target, ignore_errors=True)
    for partial in target.parent.glob(f"{target.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def manifest_check(root: Path | ZipRoot, payload: dict[str, Any]) -> None:
    """The chunk's manifest must describe its task: same images (start, count), the spec's resolution, passes and
    digest; ValueError naming the first difference. The verifier bounds every image by that resolution."""
    from synthetic import validate_spec
    from synthetic.chunk import MANIFEST, read_json
    from synthetic.schema import SchemaError, check_manifest, short

    try:
        manifest = check_manifest(read_json(root / MANIFEST))
    except (OSError, SchemaError) as exc:
        raise ValueError(f"{MANIFEST}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{MANIFEST} is not JSON ({exc})") from None
    spec = validate_spec(payload["spec"])
    expected = {
        "start": payload["start"],
        "count": payload["count"],
        "resolution": list(spec.output.resolution),
        "passes": list(spec.output.passes),
        "spec_digest": spec.digest(),
    }
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise ValueError(f"{MANIFEST} has {key} {short(manifest.get(key))}; the task's is {short(value)}")


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


class RenderKind(SpotCheckedKind[ZipRoot]):
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

    def result_value(self, result: Any) -> ZipRoot:
        """The chunk, read in place from its zip, once the zip is within its task's bounds and its manifest
        describes its task."""
        root = chunk_open(result)
        manifest_check(root, result.assignment.task.payload)
        return root

    def result_discard(self, result: Any) -> None:
        """Free the disk a result's chunk used (nothing now that it is read in place; an older marketplace's
        unpacked folder): after a rejection, or once the job is merged."""
        chunk_discard(result)

    def agree(self, a: ZipRoot, b: ZipRoot) -> bool:
        """Two replicas of one chunk agree: identical labels, RGB within synthetic's PSNR rule."""
        from synthetic import compare

        return bool(compare(a, b).ok)

    def explain(self, accepted: ZipRoot, value: ZipRoot) -> str:
        """How a rejected chunk differs from the accepted one: the first reasons synthetic.compare gives."""
        from synthetic import compare

        return "; ".join(compare(accepted, value).reasons[:3])

    def spot_check(self, task: Any, value: ZipRoot) -> tuple[bool, str]:
        """Re-render one random image of the chunk here in full (path-traced with the job's samples, every pass)
        and require its labels to match exactly and its RGB to pass the replicas' PSNR rule: the only replica of
        a trusted node's task is checked on what it is paid for, so a lazy (fewer-samples) render fails."""
        from marketplace.jobs.faults import VerifierUnavailable
        from synthetic import RenderError
        from synthetic import spot_check as rerender

        index = task.payload["start"] + secrets.randbelow(task.payload["count"])
        try:
            verdict = rerender(task.payload["spec"], value, index, asset_dir=assets_dir(task.job), full=True)
        except RenderError as exc:
            # The re-render is the marketplace's own (the task's spec and assets, never the chunk): its failure
            # says nothing about the replica.
            raise VerifierUnavailable(f"the spot-check re-render of image {index} failed: {exc}") from exc
        if not verdict.ok:
            return False, "; ".join(verdict.reasons[:3])
        scores = ", ".join(f"{db:.1f} dB" if db != float("inf") else "identical" for db in verdict.psnr_db.values())
        return True, f"image {index} re-rendered in full: labels identical, rgb {scores or 'not asked for'}"
