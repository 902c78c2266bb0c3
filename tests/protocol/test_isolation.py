"""The protocol package stands alone: importing it loads neither side nor their heavy libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_protocol_loads_neither_side_nor_torch_nor_blender() -> None:
    code = (
        "import sys, protocol; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'django', 'marketplace', 'nodeagent', 'torch', 'bpy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
