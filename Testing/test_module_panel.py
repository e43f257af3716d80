"""The module panel renders offscreen (scripts/render_panel.py, PySide6 with stand-ins for Slicer's widgets)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "render_panel.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("PySide6") is None,
                                reason="PySide6 is not installed (pip install PySide6-Essentials) - the panel "
                                       "render needs it; the module itself does not")


def test_panel_renders_to_a_non_trivial_png(tmp_path):
    out = tmp_path / "panel.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 10_000

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QImage

    image = QImage(str(out))
    assert image.width() >= 400 and image.height() >= 600, (image.width(), image.height())
    # not blank: many distinct colours and plenty of dark (text) pixels on the light background
    sample = [image.pixel(x, y) for y in range(0, image.height(), 3) for x in range(0, image.width(), 3)]
    assert len(set(sample)) > 30
    dark = sum(1 for p in sample if (p & 0xFF) + ((p >> 8) & 0xFF) + ((p >> 16) & 0xFF) < 200)
    assert 0.01 < dark / len(sample) < 0.5
    # the real logic filled in the memory estimate and the status line from the sample
    # the live estimate the panel shows is the figure the run itself reports (one estimate, not a second guess)
    shown = re.search(r"memory estimate: ([\d,]+) MB; run's own estimate: ([\d,]+) MB", proc.stdout)
    assert shown and shown.group(1) == shown.group(2) and int(shown.group(1).replace(",", "")) > 0, proc.stdout
    assert "status: Done: 21 frames" in proc.stdout and "147 x 106 x 105 voxels of 0.5 mm" in proc.stdout


def test_readme_picture_is_committed():
    png = ROOT / "docs" / "panel.png"
    assert png.is_file() and png.stat().st_size > 10_000
