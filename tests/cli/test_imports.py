"""The parts the CLI reads before any work (the runtime helpers, the attack registry) import without torch,
so parsers and `--help` stay instant."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO


def test_runtime_imports_without_torch() -> None:
    code = "import sys, birdshield.runtime; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_imports_without_torch() -> None:
    code = (
        "import sys, birdshield.attacks as a, birdshield.attacks.registry as r;"
        "a.parse_eps('4/255'); a.format_eps(0.1); a.CORRUPTIONS; r.get_spec('pgd').kwargs(0.1, steps=3);"
        "import birdshield.evaluation as e, birdshield.reporting.markdown; e.PRESETS['full'];"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
