"""Scene planning: image i of a spec as a pure function of (spec, seed, i), with no Blender involved."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from synthetic.spec import AssetProduct, ProceduralProduct, RenderSpec

# Streams of the per-image generator; a new stream never shifts the draws of an existing one.
_STREAM_LAYOUT, _STREAM_LOOK, _STREAM_CAMERA, _STREAM_LIGHTS, _STREAM_OCCLUDERS = range(5)


@dataclass(frozen=True)
class Product:
    """One labelled product instance; `size` is the slot (w, d, h) it fills, `location` its base centre."""

    instance_id: int
    catalog_index: int
    kind: str
    category: str
    size: tuple[float, float, float]
    location: tuple[float, float, float]
    yaw: float
    colours: tuple[tuple[float, float, float], ...]
    label_style: str
    texture_seed: int
    roughness: float
    specular: float
    asset_path: str | None = None


@dataclass(frozen=True)
class Box:
    """An unlabelled box (shelf board, wall, table top, occluder): centre, size (x, y, z), colour."""

    name: str
    centre: tuple[float, float, float]
    size: tuple[float, float, float]
    colour: tuple[float, float, float]
    round: bool = False


@dataclass(frozen=True)
class Light:
    """An area light aimed at `target`."""

    location: tuple[float, float, float]
    target: tuple[float, float, float]
    energy_w: float
    colour: tuple[float, float, float]
    temperature_k: float
    size_m: float


@dataclass(frozen=True)
class Camera:
    """A pinhole camera looking from `location` at `target` (36 mm sensor width)."""

    location: tuple[float, float, float]
    target: tuple[float, float, float]
    focal_mm: float


@dataclass(frozen=True)
class ImagePlan:
    """Everything Blender needs to build image `index`; also written as its metadata."""

    index: int
    image_seed: int
    cycles_seed: int
    template: str
    camera: Camera
    lights: list[Light]
    products: list[Product]
    props: list[Box]
    world_colour: tuple[float, float, float]
    world_strength: float
    resolution: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return asdict(self)


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image `index`, independent of chunking."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def hex_to_linear(colour: str) -> tuple[float, float, float]:
    """'#rrggbb' (sRGB) to linear RGB, the space Blender's shader colours are in."""
    srgb = np.array([int(colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    return (float(linear[0]), float(linear[1]), float(linear[2]))


def kelvin_to_rgb(kelvin: float) -> tuple[float, float, float]:
    """Approximate black-body colour (Tanner Helland's fit), normalised to max 1."""
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    if t >= 66:
        b = 255.0
    elif t <= 19:
        b = 0.0
    else:
        b = 138.5177312231 * math.log(t - 10) - 305.0447927307
    rgb = np.clip(np.array([r, g, b]) / 255.0, 0.0, 1.0)
    rgb = rgb / max(float(rgb.max()), 1e-6)
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def _pick_entry(rng: np.random.Generator, weights: NDArray[Any]) -> int:
    return int(rng.choice(len(weights), p=weights))


def _product(
    spec: RenderSpec,
    rng: np.random.Generator,
    look: np.random.Generator,
    entry_index: int,
    instance_id: int,
    size: tuple[float, float, float],
    location: tuple[float, float, float],
    yaw: float,
) -> Product:
    entry = spec.catalog[entry_index]
    materials = spec.randomization.materials
    if isinstance(entry, AssetProduct):
        colours: tuple[tuple[float, float, float], ...] = ()
        style = "asset"
    else:
        order = look.permutation(len(entry.palette))
        colours = tuple(hex_to_linear(entry.palette[int(k)]) for k in order[: min(4, len(order))])
        style = entry.label if entry.label != "mixed" else str(look.choice(["bands", "blocks", "glyphs", "pattern"]))
    return Product(
        instance_id=instance_id,
        catalog_index=entry_index,
        kind=entry.kind,
        category=entry.category,
        size=size,
        location=location,
        yaw=yaw,
        colours=colours,
        label_style=style,
        texture_seed=int(look.integers(0, 2**31 - 1)),
        roughness=_uniform(look, materials.roughness),
        specular=_uniform(look, materials.specular),
        asset_path=entry.path if isinstance(entry, AssetProduct) else None,
    )


def _sample_size(rng: np.random.Generator, entry: ProceduralProduct | AssetProduct) -> tuple[float, float, float]:
    """(width, depth, height) of the slot a product fills."""
    if isinstance(entry, AssetProduct):
        h = _uniform(rng, entry.height_m)
        return (h * 0.6, h * 0.6, h)
    w = _uniform(rng, entry.size_m.width)
    h = _uniform(rng, entry.size_m.height)
    if entry.kind in ("bottle", "can", "jar"):
        return (w, w, h)
    return (w, _uniform(rng, entry.size_m.depth), h)


def _shelf(spec: RenderSpec, index: int, weights: NDArray[Any]) -> tuple[list[Product], list[Box], tuple[float, ...]]:
    shelf = spec.scene.shelf
    rng = _rng(spec.seed, index, _STREAM_LAYOUT)
    look = _rng(spec.seed, index, _STREAM_LOOK)
    pose = spec.randomization.pose
    board = 0.02
    rows = _integer(rng, shelf.rows)
    heights = [_uniform(rng, shelf.row_height_m) for _ in range(rows)]
    total_h = sum(heights) + board * (rows + 1)
    colour = hex_to_linear(str(look.choice(spec.randomization.background.palette)))
    half_w, d = shelf.width_m / 2, shelf.depth_m
    props = [
        Box("shelf_back", (0.0, d + 0.01, total_h / 2), (shelf.width_m + 2 * board, 0.02, total_h), colour),
        Box("shelf_left", (-half_w - board / 2, d / 2, total_h / 2), (board, d, total_h), colour),
        Box("shelf_right", (half_w + board / 2, d / 2, total_h / 2), (board, d, total_h), colour),
    ]
    products: list[Product] = []
    z = 0.0
    for row in range(rows + 1):
        props.append(Box(f"shelf_board_{row}", (0.0, d / 2, z + board / 2), (shelf.width_m, d, board), colour))
        z += board
        if row == rows:
            break
        clearance = heights[row] - 0.02
        x = -half_w + _uniform(rng, shelf.gap_m)
        while True:
            entry_index = _pick_entry(rng, weights)
            group = _integer(rng, shelf.facings_per_group)
            w, depth, h = _sample_size(rng, spec.catalog[entry_index])
            if h > clearance:
                w, depth, h = w * clearance / h, depth * clearance / h, clearance
            depth = min(depth, d - 0.02)
            placed = False
            for _ in range(group):
                gap = _uniform(rng, shelf.gap_m)
                if x + w > half_w:
                    break
                missing = rng.random() < shelf.missing_facing_prob
                jitter = rng.uniform(-pose.position_jitter_m, pose.position_jitter_m, size=2)
                yaw = math.radians(float(rng.uniform(-pose.yaw_jitter_deg, pose.yaw_jitter_deg)))
                if not missing:
                    loc = (x + w / 2 + float(jitter[0]) * 0.3, 0.01 + depth / 2 + abs(float(jitter[1])), z)
                    products.append(_product(spec, rng, look, entry_index, len(products) + 1, (w, depth, h), loc, yaw))
                x += w + gap
                placed = True
            if not placed:
                break
        z += heights[row]
    target = (0.0, 0.0, total_h / 2)
    return products, props, target


def _table(spec: RenderSpec, index: int, weights: NDArray[Any]) -> tuple[list[Product], list[Box], tuple[float, ...]]:
    table = spec.scene.table
    rng = _rng(spec.seed, index, _STREAM_LAYOUT)
    look = _rng(spec.seed, index, _STREAM_LOOK)
    top = 0.75
    colour = hex_to_linear(str(look.choice(spec.randomization.background.palette)))
    props = [Box("table_top", (0.0, 0.0, top - 0.02), (table.width_m, table.depth_m, 0.04), colour)]
    wanted = _integer(rng, table.products)
    placed: list[tuple[float, float, float]] = []
    products: list[Product] = []
    for _ in range(wanted * 20):
        if len(products) == wanted:
            break
        entry_index = _pick_entry(rng, weights)
        w, depth, h = _sample_size(rng, spec.catalog[entry_index])
        radius = math.hypot(w, depth) / 2
        x = float(rng.uniform(-table.width_m / 2 + radius, table.width_m / 2 - radius))
        y = float(rng.uniform(-table.depth_m / 2 + radius, table.depth_m / 2 - radius))
        yaw = float(rng.uniform(0, 2 * math.pi))
        if any(math.hypot(x - px, y - py) < radius + pr + 0.005 for px, py, pr in placed):
            continue
        placed.append((x, y, radius))
        products.append(_product(spec, rng, look, entry_index, len(products) + 1, (w, depth, h), (x, y, top), yaw))
    return products, props, (0.0, 0.0, top)


def plan_image(spec: RenderSpec, index: int) -> ImagePlan:
    """The full scene of image `index` (0-based) of `spec`: a pure function of (spec, spec.seed, index)."""
    if not 0 <= index < spec.images:
        raise ValueError(f"image index {index} outside [0, {spec.images})")
    weights = np.array([entry.weight for entry in spec.catalog], dtype=np.float64)
    weights /= weights.sum()
    if spec.scene.template == "shelf":
        products, props, target = _shelf(spec, index, weights)
    else:
        products, props, target = _table(spec, index, weights)
    look = _rng(spec.seed, index, _STREAM_LOOK + 100)
    background = spec.randomization.background
    wall = hex_to_linear(str(look.choice(background.palette)))
    floor = hex_to_linear(str(look.choice(background.palette)))
    props.append(Box("floor", (0.0, 0.0, -0.01), (20.0, 20.0, 0.02), floor))
    props.append(Box("wall", (0.0, 3.0, 2.5), (20.0, 0.02, 5.0), wall))

    cam_rng = _rng(spec.seed, index, _STREAM_CAMERA)
    cam_spec = spec.randomization.camera
    distance = _uniform(cam_rng, cam_spec.distance_m)
    yaw = math.radians(_uniform(cam_rng, cam_spec.yaw_deg))
    if spec.scene.template == "shelf":
        height = target[2] + _uniform(cam_rng, cam_spec.height_m)
        horizontal = distance
    else:
        pitch = math.radians(_uniform(cam_rng, cam_spec.table_pitch_deg))
        height = target[2] + distance * math.sin(pitch)
        horizontal = distance * math.cos(pitch)
        _uniform(cam_rng, cam_spec.height_m)
    cam_loc = (horizontal * math.sin(yaw), -horizontal * math.cos(yaw), height)
    aim = cam_rng.uniform(-cam_spec.aim_jitter_m, cam_spec.aim_jitter_m, size=3)
    cam_target = (target[0] + float(aim[0]), target[1] + float(aim[1]), target[2] + float(aim[2]))
    camera = Camera(cam_loc, cam_target, _uniform(cam_rng, cam_spec.focal_mm))

    light_rng = _rng(spec.seed, index, _STREAM_LIGHTS)
    lights_spec = spec.randomization.lights
    lights = []
    for _ in range(_integer(light_rng, lights_spec.count)):
        kelvin = _uniform(light_rng, lights_spec.temperature_k)
        pos = (
            float(light_rng.uniform(-1.5, 1.5)),
            float(light_rng.uniform(-2.5, -0.8)),
            float(light_rng.uniform(1.5, 3.0)),
        )
        lights.append(
            Light(pos, cam_target, _uniform(light_rng, lights_spec.energy_w), kelvin_to_rgb(kelvin), kelvin, 1.0)
        )

    occ_rng = _rng(spec.seed, index, _STREAM_OCCLUDERS)
    occ_spec = spec.randomization.occluders
    for k in range(_integer(occ_rng, occ_spec.count)):
        t = float(occ_rng.uniform(0.35, 0.7))
        spot = np.array(cam_target) + occ_rng.uniform(-0.3, 0.3, size=3)
        centre = np.array(cam_loc) * (1 - t) + spot * t
        s = occ_rng.uniform(occ_spec.size_m[0], occ_spec.size_m[1], size=3)
        colour = hex_to_linear(str(occ_rng.choice(background.palette)))
        props.append(
            Box(
                f"occluder_{k}",
                (float(centre[0]), float(centre[1]), float(centre[2])),
                (float(s[0]), float(s[1]), float(s[2]) * 2),
                colour,
                round=bool(occ_rng.random() < 0.5),
            )
        )

    seed = image_seed(spec.seed, index)
    return ImagePlan(
        index=index,
        image_seed=seed,
        cycles_seed=seed % (2**31 - 1),
        template=spec.scene.template,
        camera=camera,
        lights=lights,
        products=products,
        props=props,
        world_colour=wall,
        world_strength=_uniform(look, background.ambient),
        resolution=spec.output.resolution,
    )
