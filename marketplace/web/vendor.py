"""The dashboard's front-end libraries, installed from npm (package.json) and copied into static/web/vendor/,
which is committed: the app serves them itself (no CDN), and a deployment needs no Node.js.

`python -m marketplace.web.vendor` copies them again after `npm install` (`make vendor`); a test checks that the
committed copies are the npm files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(__file__).resolve().parent / "static" / "web" / "vendor"
# vendored name → file under node_modules
FILES = {
    "bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "bootstrap.bundle.min.js": "bootstrap/dist/js/bootstrap.bundle.min.js",
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "chart.umd.min.js": "chart.js/dist/chart.umd.min.js",
    "ethers.umd.min.js": "ethers/dist/ethers.umd.min.js",
}


def source(name: str) -> Path:
    return ROOT / "node_modules" / FILES[name]


def main() -> int:
    TARGET.mkdir(parents=True, exist_ok=True)
    missing = [FILES[n] for n in FILES if not source(n).exists()]
    if missing:
        print(f"not in node_modules: {', '.join(missing)}; run `npm install` first", file=sys.stderr)
        return 1
    for name in FILES:
        shutil.copyfile(source(name), TARGET / name)
        print(f"{FILES[name]} → {TARGET.relative_to(ROOT) / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
