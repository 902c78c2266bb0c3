"""The render spec: a JSON scene description validated with pydantic, errors naming the field path."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ProductKind = Literal["carton", "bottle", "can", "jar", "pouch"]
PRODUCT_KINDS: tuple[str, ...] = ("carton", "bottle", "can", "jar", "pouch")
PassName = Literal["rgb", "instance", "category", "depth", "normals"]
LabelStyle = Literal["bands", "blocks", "glyphs", "pattern", "mixed"]

_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


class SpecError(ValueError):
    """A render spec is invalid; `errors` lists `(field path, message)` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {path}: {message}" for path, message in errors)
        super().__init__(f"invalid render spec ({len(errors)} error{'s' if len(errors) != 1 else ''}):\n{lines}")


def _ordered(value: tuple[float, float]) -> tuple[float, float]:
    if value[0] > value[1]:
        raise ValueError(f"range [{value[0]}, {value[1]}] has min > max")
    return value


def _hex_colour(value: str) -> str:
    if not _HEX.match(value):
        raise ValueError(f"colour {value!r} is not '#rrggbb'")
    return value.lower()


FloatRange = Annotated[tuple[float, float], AfterValidator(_ordered)]
IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]
PositiveRange = Annotated[tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]], AfterValidator(_ordered)]
UnitRange = Annotated[
    tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]], AfterValidator(_ordered)
]
Colour = Annotated[str, AfterValidator(_hex_colour)]
Palette = Annotated[list[Colour], Field(min_length=1, max_length=32)]
CategoryName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w][\w .\-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProductSize(_Strict):
    """Size ranges in metres; round kinds use `width` as the diameter and ignore `depth`."""

    width: PositiveRange
    height: PositiveRange
    depth: PositiveRange = (0.05, 0.1)


class ProceduralProduct(_Strict):
    """A procedurally modelled product kind with a generated label texture."""

    kind: ProductKind
    category: CategoryName
    size_m: ProductSize
    palette: Palette
    label: LabelStyle = "mixed"
    weight: Annotated[float, Field(gt=0)] = 1.0


class AssetProduct(_Strict):
    """A user model (glTF/GLB) attached to the job, scaled uniformly to a sampled height."""

    kind: Literal["asset"]
    category: CategoryName
    path: str
    height_m: PositiveRange
    weight: Annotated[float, Field(gt=0)] = 1.0

    @field_validator("path")
    @classmethod
    def _relative_gltf(cls, value: str) -> str:
        p = PurePosixPath(value)
        if p.is_absolute() or ".." in p.parts or "\\" in value or not value:
            raise ValueError("must be a relative path inside the job's assets (no '..', not absolute)")
        if p.suffix.lower() not in (".gltf", ".glb"):
            raise ValueError("must be a .gltf or .glb file")
        return value


CatalogEntry = Annotated[ProceduralProduct | AssetProduct, Field(discriminator="kind")]


class ShelfTemplate(_Strict):
    """A shelf unit: rows of facings, a few identical products side by side per facing group."""

    width_m: Annotated[float, Field(gt=0.2, le=5)] = 1.2
    depth_m: Annotated[float, Field(gt=0.1, le=1.5)] = 0.4
    rows: IntRange = (3, 4)
    row_height_m: PositiveRange = (0.3, 0.4)
    facings_per_group: IntRange = (1, 3)
    gap_m: FloatRange = (0.004, 0.02)
    missing_facing_prob: Annotated[float, Field(ge=0, le=1)] = 0.1


class TableTemplate(_Strict):
    """A table/counter top with products scattered on it."""

    width_m: Annotated[float, Field(gt=0.2, le=5)] = 1.2
    depth_m: Annotated[float, Field(gt=0.2, le=5)] = 0.8
    products: IntRange = (4, 10)


class SceneSpec(_Strict):
    """Which template, and its parameters."""

    template: Literal["shelf", "table"] = "shelf"
    shelf: ShelfTemplate = ShelfTemplate()
    table: TableTemplate = TableTemplate()


class CameraRandom(_Strict):
    """Camera distance to the target, height offset, yaw around it, aim jitter and focal length."""

    distance_m: PositiveRange = (1.3, 1.9)
    height_m: FloatRange = (-0.2, 0.3)
    yaw_deg: FloatRange = (-20.0, 20.0)
    aim_jitter_m: Annotated[float, Field(ge=0, le=2)] = 0.08
    focal_mm: PositiveRange = (28.0, 45.0)
    table_pitch_deg: FloatRange = (30.0, 60.0)


class LightRandom(_Strict):
    """Number of area lights, their power (W) and colour temperature (K)."""

    count: IntRange = (1, 3)
    energy_w: PositiveRange = (30.0, 120.0)
    temperature_k: Annotated[tuple[Annotated[float, Field(ge=1000, le=40000)], float], AfterValidator(_ordered)] = (
        3000.0,
        6500.0,
    )


class MaterialRandom(_Strict):
    """Principled BSDF ranges for product surfaces."""

    roughness: UnitRange = (0.2, 0.7)
    specular: UnitRange = (0.3, 0.7)


class PoseRandom(_Strict):
    """Per-product placement jitter."""

    position_jitter_m: Annotated[float, Field(ge=0, le=0.2)] = 0.01
    yaw_jitter_deg: Annotated[float, Field(ge=0, le=180)] = 8.0


class OccluderRandom(_Strict):
    """Unlabelled boxes/cylinders between the camera and the products."""

    count: IntRange = (0, 1)
    size_m: PositiveRange = (0.05, 0.2)


class BackgroundRandom(_Strict):
    """Wall/floor colours and the world's ambient strength."""

    palette: Palette = ["#d8d4cc", "#9aa3a8", "#e9e4da", "#6b6f73"]
    ambient: UnitRange = (0.05, 0.3)


class Randomization(_Strict):
    """Ranges every image samples from."""

    camera: CameraRandom = CameraRandom()
    lights: LightRandom = LightRandom()
    materials: MaterialRandom = MaterialRandom()
    pose: PoseRandom = PoseRandom()
    occluders: OccluderRandom = OccluderRandom()
    background: BackgroundRandom = BackgroundRandom()


class OutputSpec(_Strict):
    """Resolution (width, height), Cycles samples, denoising and the passes written (`normals` is opt-in)."""

    resolution: tuple[Annotated[int, Field(ge=16, le=8192)], Annotated[int, Field(ge=16, le=8192)]] = (640, 480)
    samples: Annotated[int, Field(ge=1, le=4096)] = 64
    denoise: bool = False
    passes: Annotated[list[PassName], Field(min_length=1)] = ["rgb", "instance", "category", "depth"]

    @field_validator("passes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("passes must not repeat")
        return value


class RenderSpec(_Strict):
    """A whole render job: catalog, scene template, randomisation, output, seed and image count."""

    version: Literal[1] = 1
    catalog: Annotated[list[CatalogEntry], Field(min_length=1, max_length=1000)]
    scene: SceneSpec = SceneSpec()
    randomization: Randomization = Randomization()
    output: OutputSpec = OutputSpec()
    seed: Annotated[int, Field(ge=0, lt=2**63)]
    images: Annotated[int, Field(ge=1, le=100_000_000)]

    @model_validator(mode="after")
    def _labels_present(self) -> RenderSpec:
        if "instance" not in self.output.passes:
            raise ValueError("output.passes must include 'instance' (every label is derived from it)")
        return self

    def categories(self) -> list[str]:
        """Category names in first-appearance order of the catalog; COCO id = position + 1."""
        seen: list[str] = []
        for entry in self.catalog:
            if entry.category not in seen:
                seen.append(entry.category)
        return seen

    def digest(self) -> str:
        """A stable sha256 of the normalised spec (what every chunk of a job shares)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(previous, int) and part in (*PRODUCT_KINDS, "asset"):
            pass  # pydantic adds the discriminator's value after a union member's index; the index names it already
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(spec)"


def validate_spec(data: Any) -> RenderSpec:
    """Validate a spec dict; raise `SpecError` whose lines name each bad field path (e.g. `output.resolution`)."""
    if not isinstance(data, dict):
        raise SpecError([("(spec)", "must be a JSON object")])
    try:
        return RenderSpec.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for err in exc.errors(include_url=False):
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            errors.append((_path(tuple(err["loc"])), message))
        raise SpecError(errors) from None


def load_spec(text: str) -> RenderSpec:
    """Parse JSON text and validate it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError([("(spec)", f"not valid JSON: {exc}")]) from None
    return validate_spec(data)
