"""Open a self-contained report page in headless Chromium (Debian's package; .ci/run installs
it): every image decoded, and a screenshot that shows drawn content."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def check_in_chromium(page: Path, images: int, height: int, shot: Path) -> None:
    """Load ``page``: its body reports ``images`` images, all decoded; a 1200 × ``height``
    screenshot has contrast and many grey levels (plots, not a blank page)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package)")
    url = page.resolve().as_uri()
    profile = tempfile.mkdtemp()
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=5000",
         "--dump-dom", url], capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert f'data-images="{images}"' in body and 'data-images-ok="true"' in body, body
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size=1200,{height}",
         f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert img.size == (1200, height) and hi - lo > 150  # rendered content, not a blank page
    # the plots are visible: many distinct grey levels, as drawn lines and heatmaps give
    assert len(img.resize((300, height // 4)).getcolors(256)) > 50
