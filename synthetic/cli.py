"""Command line: `python -m synthetic render|merge|show|compare …`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm  # type: ignore[import-untyped]

from synthetic.compare import RGB_MIN_PSNR_DB, compare
from synthetic.merge import MergeError, merge
from synthetic.render import RenderError, render_chunk
from synthetic.show import show
from synthetic.spec import SpecError, load_spec


def _render(args: argparse.Namespace) -> int:
    spec_path = Path(args.spec)
    spec = load_spec(spec_path.read_text())
    count = args.count if args.count is not None else spec.images - args.start
    with tqdm(total=count, unit="img", desc="render", file=sys.stderr) as bar:
        render_chunk(
            spec.model_dump(mode="json"),
            args.start,
            count,
            args.out,
            asset_dir=args.assets or spec_path.parent,
            device=args.device,
            progress=lambda done: bar.update(done - bar.n),
        )
    print(f"rendered images {args.start}..{args.start + count - 1} into {args.out}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    with tqdm(unit="img", desc="merge", file=sys.stderr) as bar:
        totals = merge(args.chunks, args.out, progress=lambda done: bar.update(done - bar.n))
    print(
        f"merged {len(args.chunks)} chunks: {totals['images']} images, {totals['annotations']} annotations → {args.out}"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    image = show(args.dataset, args.image, args.out)
    print(f"image {args.image} ({image['file_name']}) → {args.out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    verdict = compare(args.dir_a, args.dir_b)
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        worst = min(verdict.psnr_db.values(), default=float("inf"))
        print(
            f"{'ACCEPT' if verdict.ok else 'REJECT'} (rgb rule: PSNR ≥ {RGB_MIN_PSNR_DB:.0f} dB; lowest {worst:.2f} dB)"
        )
        for reason in verdict.reasons:
            print(f"  - {reason}")
    return 0 if verdict.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `python -m synthetic`."""
    parser = argparse.ArgumentParser(prog="python -m synthetic", description="Labeled synthetic renders with Blender.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("render", help="render images of a spec into a chunk dir")
    p.add_argument("spec", help="render spec JSON")
    p.add_argument("--out", required=True, help="chunk directory")
    p.add_argument("--start", type=int, default=0, help="first image index (0-based)")
    p.add_argument("--count", type=int, help="number of images (default: to the end)")
    p.add_argument("--assets", help="directory the spec's glTF paths are relative to (default: the spec's)")
    p.add_argument("--device", choices=["auto", "cpu"], default="auto", help="auto uses CUDA/OptiX when present")
    p.set_defaults(func=_render)
    p = sub.add_parser("merge", help="merge chunk dirs into one COCO dataset zip")
    p.add_argument("chunks", nargs="+", help="chunk directories")
    p.add_argument("--out", required=True, help="dataset .zip")
    p.set_defaults(func=_merge)
    p = sub.add_parser("show", help="draw one image with mask, box and category overlays")
    p.add_argument("dataset", help="chunk directory or dataset .zip")
    p.add_argument("--image", type=int, required=True, help="image position (0-based) in the dataset")
    p.add_argument("--out", required=True, help="output PNG")
    p.set_defaults(func=_show)
    p = sub.add_parser("compare", help="verify two replicas of a chunk; exit 1 when rejected")
    p.add_argument("dir_a")
    p.add_argument("dir_b")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors are printed on stderr with a non-zero exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RenderError, MergeError, ValueError, OSError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
