"""Bytes communicated to reach a target validation accuracy on rendered product crops: synchronous data-parallel
SGD (every step's gradients averaged: the baseline) against FedAvg, FedAvg + int8, FedAvg + top-k 1 % with error
feedback and FedAvg + PowerSGD (rank 4, error feedback). Same participants, shards, seeds and steps, in-process,
with the `training/` code the nodes run (train_local → compress → decompress → aggregate → apply).

    .venv/bin/python bench/train_comm.py [--participants 4] [--local-steps 25] [--steps 600] [--target 0.8]

The dataset is rendered once (`python -m synthetic render` + `merge`, a few minutes on 2 CPU cores) and cached
under var/bench-cache/. Prints the table (bytes to the target, ratio to the baseline), verification figures measured
on the last round, and writes a plot of accuracy against bytes (PIL; --plot).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from training.aggregate import aggregate, apply  # noqa: E402
from training.compress import CompressionSpec, compress, decompress  # noqa: E402
from training.data import CropSet, crops_from_coco, load_set, save_set, shard, split  # noqa: E402
from training.evaluate import evaluate  # noqa: E402
from training.local import HyperParams, train_local  # noqa: E402
from training.verify import NORM_FACTOR, loss_check, replay_check, update_norm  # noqa: E402
from training.weights import initial_state, save_model  # noqa: E402

CACHE = ROOT / "var" / "bench-cache"
MODEL = "smallcnn"
IMAGE_SIZE = 32


def render_spec(images: int) -> dict[str, Any]:
    """Six product categories scattered on a table, 128² at 8 samples, camera close enough for ~10–40 px boxes."""
    return {
        "catalog": [
            {"kind": "carton", "category": "cereal", "palette": ["#d62828", "#f7f7f7", "#003049"],
             "size_m": {"width": [0.15, 0.25], "height": [0.2, 0.3], "depth": [0.05, 0.08]}},
            {"kind": "bottle", "category": "water", "palette": ["#0077b6", "#ffffff"],
             "size_m": {"width": [0.06, 0.09], "height": [0.2, 0.3]}},
            {"kind": "can", "category": "soda", "palette": ["#e63946", "#ffffff"],
             "size_m": {"width": [0.06, 0.07], "height": [0.11, 0.13]}},
            {"kind": "jar", "category": "jam", "palette": ["#6a040f", "#ffba08"],
             "size_m": {"width": [0.07, 0.09], "height": [0.09, 0.12]}},
            {"kind": "pouch", "category": "chips", "palette": ["#ffb703", "#023047"],
             "size_m": {"width": [0.12, 0.18], "height": [0.18, 0.25], "depth": [0.03, 0.05]}},
            {"kind": "carton", "category": "tea", "palette": ["#2a9d8f", "#e9c46a"],
             "size_m": {"width": [0.1, 0.14], "height": [0.08, 0.12], "depth": [0.06, 0.08]}},
        ],
        "scene": {"template": "table", "table": {"products": [3, 6]}},
        "randomization": {"camera": {"distance_m": [0.9, 1.2]}},
        "output": {"resolution": [128, 128], "samples": 8},
        "seed": 7,
        "images": images,
    }  # fmt: skip


def dataset(images: int, chunk: int) -> Path:
    """The merged COCO zip of the bench spec, rendered on first use and cached by the spec's digest."""
    spec = render_spec(images)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    out = CACHE / f"train-comm-{digest}.zip"
    if out.is_file():
        print(f"dataset: cached {out.relative_to(ROOT)}", flush=True)
        return out
    work = CACHE / f"train-comm-{digest}-chunks"
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / "spec.json"
    spec_file.write_text(json.dumps(spec))
    started = time.perf_counter()
    chunks = []
    for start in range(0, images, chunk):
        count = min(chunk, images - start)
        target = work / f"c{start:05d}"
        chunks.append(str(target))
        if (target / "chunk.json").is_file():
            continue
        print(f"dataset: rendering images {start}..{start + count - 1} of {images}", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "synthetic",
                "render",
                str(spec_file),
                "--out",
                str(target),
                "--start",
                str(start),
                "--count",
                str(count),
                "--device",
                "cpu",
            ],
            check=True,
            cwd=ROOT,
        )
    subprocess.run([sys.executable, "-m", "synthetic", "merge", *chunks, "--out", str(out)], check=True, cwd=ROOT)
    shutil.rmtree(work)
    print(f"dataset: rendered and merged in {time.perf_counter() - started:.0f} s → {out.relative_to(ROOT)}")
    return out


def crops(images: int, chunk: int) -> CropSet:
    """Crops of the bench dataset (cached beside it)."""
    zip_path = dataset(images, chunk)
    path = zip_path.with_suffix(f".crops{IMAGE_SIZE}.safetensors")
    if not path.is_file():
        save_set(path, crops_from_coco(zip_path, image_size=IMAGE_SIZE, margin=0.1, min_visible=0.3))
    return load_set(path)


@dataclass
class Curve:
    """Accuracy on the held-out split against the bytes sent so far, for one method."""

    name: str
    points: list[tuple[int, int, int, float]] = field(default_factory=list)  # (steps, uplink, total, accuracy)
    last: dict[str, Any] = field(default_factory=dict)
    final_state: dict[str, torch.Tensor] = field(default_factory=dict)
    norm_ratios: list[float] = field(default_factory=list)

    def to_target(self, target: float) -> tuple[int, int, int] | None:
        """(steps, uplink bytes, total bytes) at the first evaluation where the mean of it and the one before
        reaches `target` (the held-out set is small: one evaluation alone is ±3 % noise)."""
        for before, (steps, up, total, acc) in zip(self.points, self.points[1:], strict=False):
            if (before[3] + acc) / 2 >= target:
                return steps, up, total
        return None


def _evaluate(state: dict[str, torch.Tensor], val: CropSet) -> float:
    return evaluate(MODEL, len(val.classes), IMAGE_SIZE, state, val)["accuracy"]


def sync_sgd(shards: list[CropSet], val: CropSet, args: argparse.Namespace, lr: float) -> Curve:
    """Synchronous data-parallel SGD: every step each participant sends its gradient (float32), the server averages
    them, applies momentum and sends the averaged gradient back; evaluated every `local_steps` steps, stopped at
    the target (the baseline only needs its bytes to the target)."""
    curve = Curve(f"sync SGD (lr {lr:g})")
    classes = len(val.classes)
    state = initial_state(MODEL, classes, IMAGE_SIZE, seed=0)
    # One plain SGD step per participant gives −lr × gradient; the server keeps the momentum, as PyTorch's SGD does.
    hp = HyperParams(batch_size=args.batch_size, lr=lr, momentum=0.0)
    velocity: dict[str, torch.Tensor] | None = None
    up = total = 0
    curve.points.append((0, 0, 0, _evaluate(state, val)))
    for step in range(1, args.steps + 1):
        deltas = []
        for k, part in enumerate(shards):
            seed = 1_000_000 * k + step
            result = train_local(MODEL, classes, IMAGE_SIZE, state, part, hp, 1, seed=seed, loss_sample=0)
            payload, _ = compress(result.delta, CompressionSpec("none"))
            up += len(payload)
            deltas.append(decompress(payload))
        mean = aggregate(deltas, [float(len(s)) for s in shards], "fedavg")
        down, _ = compress(mean, CompressionSpec("none"))
        total += len(down) * len(shards)
        velocity = mean if velocity is None else {k: args.momentum * velocity[k] + mean[k] for k in mean}
        state = apply(state, velocity)
        if step % args.local_steps == 0:
            acc = _evaluate(state, val)
            curve.points.append((step, up, up + total, acc))
            print(f"  {curve.name}: step {step}/{args.steps}, accuracy {acc:.3f}, uplink {up / 1e6:.2f} MB", flush=True)
            if curve.to_target(args.target):
                break
    return curve


def fedavg(
    name: str,
    spec: CompressionSpec,
    shards: list[CropSet],
    val: CropSet,
    args: argparse.Namespace,
    down_spec: CompressionSpec | None = None,
) -> Curve:
    """FedAvg rounds of `local_steps` local steps; updates compressed with `spec` (error feedback per node).

    The server sends the round's aggregate back to every node: dense float32, or compressed with `down_spec` and
    the server's own residual (every node applies the same decompressed broadcast, so all copies stay equal)."""
    curve = Curve(name)
    classes = len(val.classes)
    state = initial_state(MODEL, classes, IMAGE_SIZE, seed=0)
    hp = HyperParams(batch_size=args.batch_size, lr=args.lr, momentum=args.momentum)
    residuals: list[dict[str, torch.Tensor] | None] = [None] * len(shards)
    server_residual: dict[str, torch.Tensor] | None = None
    previous: dict[str, torch.Tensor] | None = None
    up = total = 0
    curve.points.append((0, 0, 0, _evaluate(state, val)))
    rounds = args.steps // args.local_steps
    for round_ in range(rounds):
        deltas, norms = [], []
        for k, part in enumerate(shards):
            seed = 1_000_000 * k + round_
            result = train_local(MODEL, classes, IMAGE_SIZE, state, part, hp, args.local_steps, seed=seed)
            residual_before = residuals[k]
            payload, residuals[k] = compress(result.delta, spec, residuals[k], seed=round_)
            up += len(payload)
            claimed = decompress(payload)
            deltas.append(claimed)
            norms.append(update_norm(claimed))
            if k == 0 and round_ == rounds - 1:
                curve.last = {
                    "state": state,
                    "residual": residual_before,
                    "claimed": claimed,
                    "seed": seed,
                    "raw": result.delta,
                    "previous": previous,
                    "round": round_,
                }
            if k == 0:
                previous = claimed
        curve.norm_ratios.append(max(norms) / statistics.median(norms))
        mean = aggregate(deltas, [float(len(s)) for s in shards], "fedavg")
        down, server_residual = compress(mean, down_spec or CompressionSpec("none"), server_residual, seed=round_)
        total += len(down) * len(shards)
        state = apply(state, decompress(down))
        acc = _evaluate(state, val)
        curve.points.append(((round_ + 1) * args.local_steps, up, up + total, acc))
        print(f"  {name}: round {round_ + 1}/{rounds}, accuracy {acc:.3f}, uplink {up / 1e6:.3f} MB", flush=True)
    curve.final_state = state
    return curve


def verification(
    curve: Curve, spec: CompressionSpec, shards: list[CropSet], val: CropSet, args: argparse.Namespace
) -> str:
    """Replay figures on the last round of participant 0: honest, a random update of the same norms, a lazy node."""
    last = curve.last
    classes = len(val.classes)
    hp = HyperParams(batch_size=args.batch_size, lr=args.lr, momentum=args.momentum)
    replayed = train_local(
        MODEL, classes, IMAGE_SIZE, last["state"], shards[0], hp, args.local_steps, seed=last["seed"]
    ).delta
    gen = torch.Generator().manual_seed(1)
    fake = {}
    for k, v in last["claimed"].items():
        noise = torch.randn(v.shape, generator=gen)
        fake[k] = noise * (v.norm() / noise.norm().clamp_min(1e-12))
    zeros = {k: torch.zeros_like(v) for k, v in fake.items()}
    fake = decompress(compress(fake, spec, zeros if spec.keeps_residual else None)[0])
    lazy_raw = train_local(
        MODEL, classes, IMAGE_SIZE, last["state"], shards[0], hp, args.local_steps // 4, seed=last["seed"]
    ).delta
    lazy = decompress(compress(lazy_raw, spec, last["residual"], seed=last["round"])[0])
    previous = last["previous"] if spec.name == "topk" else None
    figures = [replay_check(c, replayed, spec, previous=previous) for c in (last["claimed"], lazy, fake)]
    share = len(shards[0]) / sum(len(s) for s in shards)
    loss_alone = loss_check(MODEL, classes, IMAGE_SIZE, last["state"], last["claimed"], val, 0.05)[1]
    loss_share = loss_check(MODEL, classes, IMAGE_SIZE, last["state"], last["claimed"], val, 0.05, scale=share)[1]
    flipped = {k: -4 * v for k, v in last["claimed"].items()}
    loss_flip = loss_check(MODEL, classes, IMAGE_SIZE, last["state"], flipped, val, 0.05, scale=share)[1]
    words = ", ".join(
        f"{label} {'pass' if ok else 'FAIL'} ({reason})"
        for label, (ok, reason) in zip(("honest", "lazy ¼", "fake"), figures, strict=True)
    )
    return (
        f"{curve.name}: {words}\n    loss check, honest update: {loss_alone}; {loss_share}\n"
        f"    loss check, the honest update × −4 (poisoned): {loss_flip}"
    )


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def plot(curves: list[Curve], target: float, path: Path) -> None:
    """Accuracy against uplink bytes (log scale), one line per method, a dashed target line, a legend."""
    width, height, left, right, top, bottom = 900, 560, 80, 20, 40, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    xs = [p[1] for c in curves for p in c.points if p[1] > 0]
    lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    accs = [p[3] for c in curves for p in c.points]
    y_lo, y_hi = math.floor(min(accs) * 10) / 10, 1.0

    def px(x: float, y: float) -> tuple[float, float]:
        fx = (math.log10(x) - lo) / (hi - lo)
        fy = (y - y_lo) / (y_hi - y_lo)
        return left + fx * (width - left - right), height - bottom - fy * (height - top - bottom)

    font, small = _font(15), _font(12)
    draw.text((left, 10), "Held-out accuracy vs bytes sent by the nodes (uplink, log scale)", fill="black", font=font)
    for e in range(lo, hi + 1):
        x, _ = px(10**e, y_lo)
        draw.line([(x, top), (x, height - bottom)], fill=(225, 225, 225))
        draw.text((x - 14, height - bottom + 6), f"1e{e}", fill="black", font=small)
    steps = round((y_hi - y_lo) / 0.1)
    for i in range(steps + 1):
        y = y_lo + i * 0.1
        _, py = px(10**lo, y)
        draw.line([(left, py), (width - right, py)], fill=(225, 225, 225))
        draw.text((left - 34, py - 7), f"{y:.1f}", fill="black", font=small)
    draw.rectangle([(left, top), (width - right, height - bottom)], outline="black")
    draw.text((width // 2 - 40, height - 28), "bytes (uplink)", fill="black", font=small)
    _, ty = px(10**lo, target)
    for x0 in range(left, width - right, 12):
        draw.line([(x0, ty), (min(x0 + 6, width - right), ty)], fill=(120, 120, 120), width=1)
    draw.text((left + 8, ty - 16), f"target {target:.2f}", fill=(90, 90, 90), font=small)
    colours = [(0, 0, 0), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    for n, curve in enumerate(curves):
        points = [px(up, acc) for _, up, _, acc in curve.points if up > 0]
        colour = colours[n % len(colours)]
        draw.line(points, fill=colour, width=2)
        for x, y in points[:: max(1, len(points) // 12)]:
            draw.ellipse([(x - 2.5, y - 2.5), (x + 2.5, y + 2.5)], fill=colour)
        ly = height - bottom - 20 - 20 * (len(curves) - n)
        draw.line([(width - right - 250, ly + 7), (width - right - 220, ly + 7)], fill=colour, width=3)
        draw.text((width - right - 212, ly), curve.name, fill="black", font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=240, help="rendered images (default 240)")
    parser.add_argument("--chunk", type=int, default=60, help="images per render chunk")
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=25, help="FedAvg local steps per round")
    parser.add_argument("--steps", type=int, default=600, help="training steps per participant, every method")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05, help="local learning rate of the FedAvg nodes")
    parser.add_argument("--sync-lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="baseline sweep")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--target", type=float, default=0.8, help="held-out accuracy to reach")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--plot", type=Path, default=ROOT / "var" / "bench" / "train_comm.png")
    parser.add_argument("--only", nargs="*", help="only these (keys: sync fedavg int8 topk powersgd topk-int8)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    data = crops(args.images, args.chunk)
    train, val = split(data, 0.2, seed=0)
    shards = [shard(train, k, args.participants, seed=0) for k in range(args.participants)]
    print(
        f"{len(data)} crops of {IMAGE_SIZE}² in {len(data.classes)} classes ({', '.join(data.classes)}); "
        f"train {len(train)} in {args.participants} shards, held-out {len(val)}; chance "
        f"{max(val.counts()) / len(val):.3f}",
        flush=True,
    )
    methods = {
        "fedavg": ("FedAvg", CompressionSpec("none")),
        "int8": ("FedAvg + int8", CompressionSpec("int8")),
        "topk": ("FedAvg + top-k 1% EF", CompressionSpec("topk", topk_fraction=0.01)),
        "powersgd": ("FedAvg + PowerSGD r4 EF", CompressionSpec("powersgd", rank=4)),
        "topk-int8": ("FedAvg + top-k 1% EF, int8 down", CompressionSpec("topk", topk_fraction=0.01)),
    }
    only = set(args.only or ["sync", *methods])
    curves: list[Curve] = []
    specs: dict[str, CompressionSpec] = {}
    if "sync" in only:
        # The baseline gets its best learning rate of a small sweep (fewest bytes to the target).
        sweep = []
        for lr in args.sync_lrs:
            print(f"sync SGD, lr {lr:g}", flush=True)
            sweep.append(sync_sgd(shards, val, args, lr))
        reached = [c for c in sweep if c.to_target(args.target)]
        best = min(reached, key=lambda c: c.points[-1][1]) if reached else sweep[0]
        curves.append(Curve(f"{best.name} = baseline", best.points))
    for key, (name, spec) in methods.items():
        if key in only:
            print(name, flush=True)
            down = CompressionSpec("int8") if key == "topk-int8" else None
            curves.append(fedavg(name, spec, shards, val, args, down_spec=down))
            specs[name] = spec
    print(
        f"\n{MODEL} ({IMAGE_SIZE}²), {args.participants} participants, batch {args.batch_size}, lr {args.lr}, "
        f"momentum {args.momentum}, FedAvg rounds of {args.local_steps} local steps, {args.steps} steps each; "
        f"target held-out accuracy {args.target}; {os.cpu_count()} CPUs, {args.threads} torch thread(s)"
    )
    if "sync" in only:
        for c in sweep:
            hit = c.to_target(args.target)
            print(f"baseline sweep: {c.name}: " + (f"{hit[1] / 1e6:.1f} MB to the target" if hit else "not reached"))
    base = curves[0].to_target(args.target) if curves and curves[0].name.startswith("sync") else None
    print(f"{'method':<32}{'steps':>6}{'uplink MB':>11}{'vs sync':>9}{'up+down MB':>12}{'vs sync':>9}{'best acc':>10}")
    for curve in curves:
        hit = curve.to_target(args.target)
        best_acc = max(p[3] for p in curve.points)
        if hit is None:
            print(f"{curve.name:<32}{'—':>6}{'not reached':>11}{'':>9}{'':>12}{'':>9}{best_acc:>10.3f}")
            continue
        steps, up, total = hit
        ratio_up = f"{base[1] / up:.0f}×" if base else "—"
        ratio_total = f"{base[2] / total:.0f}×" if base else "—"
        print(
            f"{curve.name:<32}{steps:>6}{up / 1e6:>11.3f}{ratio_up:>9}{total / 1e6:>12.3f}{ratio_total:>9}"
            f"{best_acc:>10.3f}"
        )
    print("\nverification on the last round (participant 0):")
    for curve in curves:
        if curve.name in specs and "down" not in curve.name:
            print("  " + verification(curve, specs[curve.name], shards, val, args))
            ratios = curve.norm_ratios
            print(
                f"    largest update norm ÷ round median: at most {max(ratios):.2f} over {len(ratios)} rounds "
                f"(the norm check allows {NORM_FACTOR:g}×)"
            )
    plot(curves, args.target, args.plot)
    fedavg_curve = next((c for c in curves if c.name == "FedAvg"), None)
    if fedavg_curve is not None:
        # For trying the CLI: `python -m training evaluate|predict` on the FedAvg model and the held-out crops.
        model_path = args.plot.with_name("train_comm_fedavg.safetensors")
        save_model(model_path, fedavg_curve.final_state, model=MODEL, classes=data.classes, image_size=IMAGE_SIZE)
        save_set(args.plot.with_name("train_comm_val.safetensors"), val)
        print(f"FedAvg model: {model_path}; held-out crops: {args.plot.with_name('train_comm_val.safetensors')}")
    print(f"\nplot: {args.plot}; total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
