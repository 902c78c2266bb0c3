"""Command line: `python -m training predict|evaluate|crops …`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from training.data import CropSet, crops_from_coco, load_set, save_set
from training.evaluate import evaluate, image_tensor, load_net, logits_of, predict
from training.local import pick_device
from training.weights import ModelInfo, load_model


def _device(name: str) -> str:
    if name == "auto":
        return pick_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


def _dataset(path: str, info: ModelInfo, margin: float, min_visible: float) -> CropSet:
    """A crop set (.safetensors from `crops`) or a COCO dataset, with labels renumbered to the model's classes."""
    if Path(path).is_file() and Path(path).suffix == ".safetensors":
        crops = load_set(path)
        if crops.image_size != info.image_size:
            raise ValueError(f"{path}: crops are {crops.image_size}², the model expects {info.image_size}²")
    else:
        crops = crops_from_coco(path, image_size=info.image_size, margin=margin, min_visible=min_visible)
    if crops.classes == info.classes:
        return crops
    unknown = sorted(set(crops.classes) - set(info.classes))
    if unknown:
        raise ValueError(f"{path}: classes {unknown} are not among the model's {info.classes}")
    mapping = torch.tensor([info.classes.index(name) for name in crops.classes], dtype=torch.int64)
    return CropSet(crops.images, mapping[crops.labels], list(info.classes))


def _predict(args: argparse.Namespace) -> int:
    state, info = load_model(args.model)
    images = torch.stack([image_tensor(path, info.image_size) for path in args.images])
    answers = predict(info.model, info.classes, info.image_size, state, images, _device(args.device))
    for path, (name, confidence) in zip(args.images, answers, strict=True):
        print(f"{path}: {name} (confidence {confidence:.3f})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    state, info = load_model(args.model)
    crops = _dataset(args.dataset, info, args.margin, args.min_visible)
    device = _device(args.device)
    result = evaluate(info.model, len(info.classes), info.image_size, state, crops, device)
    correct = round(result["accuracy"] * len(crops))
    print(f"accuracy {result['accuracy']:.4f} ({correct}/{len(crops)} crops), loss {result['loss']:.4f}")
    net = load_net(info.model, len(info.classes), info.image_size, state, device)
    predicted = logits_of(net, crops.images, device).argmax(dim=1)
    width = max(len(name) for name in info.classes)
    for label, name in enumerate(info.classes):
        members = crops.labels == label
        n = int(members.sum())
        if n:
            hits = int((predicted[members] == label).sum())
            print(f"  {name:<{width}}  {hits / n:.3f} ({hits}/{n})")
    return 0


def _crops(args: argparse.Namespace) -> int:
    crops = crops_from_coco(args.dataset, image_size=args.image_size, margin=args.margin, min_visible=args.min_visible)
    save_set(args.out, crops)
    per_class = ", ".join(f"{c} {n}" for c, n in zip(crops.classes, crops.counts(), strict=True))
    print(f"{len(crops)} crops of {args.image_size}² in {len(crops.classes)} classes ({per_class}) → {args.out}")
    if args.png_dir:
        out = Path(args.png_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k in range(min(len(crops), args.png_limit)):
            pixels = crops.images[k].permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(out / f"{k:05d}_{crops.classes[int(crops.labels[k])]}.png")
        print(f"wrote {min(len(crops), args.png_limit)} crops as PNG into {out}")
    return 0


def _crop_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--margin", type=float, default=0.1, help="box margin per edge, a fraction of the longer side")
    p.add_argument("--min-visible", type=float, default=0.0, help="skip objects less visible than this (0..1)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m training`."""
    parser = argparse.ArgumentParser(prog="python -m training", description="Product-crop classifiers (PyTorch).")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="print the class and confidence of each image")
    p.add_argument("model", help="weights file (.safetensors written by training.weights.save_model)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, each one product crop")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.set_defaults(func=_predict)
    p = sub.add_parser("evaluate", help="print the accuracy of a model on a dataset")
    p.add_argument("model", help="weights file")
    p.add_argument("dataset", help="COCO dataset (.zip or directory) or a crop set (.safetensors)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    _crop_options(p)
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("crops", help="cut the annotated objects of a COCO dataset into a crop set file")
    p.add_argument("dataset", help="COCO dataset (.zip or directory)")
    p.add_argument("--out", required=True, help="crop set file (.safetensors)")
    p.add_argument("--image-size", type=int, default=32, help="side of the square crops (default 32)")
    p.add_argument("--png-dir", help="also write the first crops as PNG files here")
    p.add_argument("--png-limit", type=int, default=20, help="how many crops --png-dir writes (default 20)")
    _crop_options(p)
    p.set_defaults(func=_crops)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad arguments and unreadable inputs print `error: …` on stderr and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
