"""A screenshot of the page (the Attack tab after PGD at 4/255) for the README, from real runs.

    python scripts/screenshot.py RUN_DIR [RUN_DIR ...] [--photo FILE] [--out docs/page.png]

Serves the runs in this process on 127.0.0.1 at a free port (the keyword imagenet-birds adds the ImageNet
bird model), uploads the photo in headless chromium, runs the default attack on the first model and
saves the whole page as a 256-colour PNG (small enough to commit). The photo defaults to a bird drawn here
(sky, body, wing, beak, leaf-like texture): the committed screenshot holds no photo from ../shared, whose
licences do not allow redistribution.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 300_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(url: str, photo: Path, out: Path, width: int) -> None:
    """Upload, attack, and save the page at `width` CSS pixels."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": width, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_load_state("networkidle")
        page.set_input_files("#photo input[type=file]", str(photo))
        page.locator(".top [data-testid=label-output-value]").first.wait_for()
        page.get_by_role("tab", name="Attack").click()
        page.locator("#run-attack").click()
        page.locator("#attack-summary").get_by_text("Attack time").wait_for()
        page.locator(".adv-top [data-testid=label-output-value]").first.wait_for()
        page.wait_for_timeout(1500)  # let the images and bars finish fading in
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def drawn_bird(path: Path, size: int = 320) -> Path:
    """A bird drawn with PIL (no third-party photo): sky gradient, branch, blue body, white belly, beak."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    sky = np.linspace([150, 190, 230], [215, 230, 245], size)[:, None, :].repeat(size, 1)
    img = Image.fromarray((sky + rng.normal(0, 4, sky.shape)).clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.line([(0, 250), (size, 215)], fill=(95, 70, 45), width=14)  # branch
    d.ellipse([95, 120, 235, 225], fill=(40, 90, 190))  # body
    d.ellipse([120, 165, 220, 222], fill=(235, 235, 240))  # belly
    d.ellipse([190, 85, 260, 150], fill=(40, 90, 190))  # head
    d.polygon([(255, 112), (292, 122), (255, 132)], fill=(40, 40, 40))  # beak
    d.ellipse([228, 103, 240, 115], fill=(10, 10, 10))  # eye
    d.polygon([(100, 150), (20, 120), (35, 175)], fill=(30, 70, 160))  # tail
    d.polygon([(130, 140), (200, 150), (150, 195)], fill=(25, 60, 150))  # wing
    d.line([(170, 222), (165, 245)], fill=(60, 50, 40), width=4)  # legs
    d.line([(195, 222), (198, 240)], fill=(60, 50, 40), width=4)
    img.filter(ImageFilter.GaussianBlur(1)).save(path)
    return path


def shrink(path: Path) -> None:
    """256 colours (the page is mostly flat colour; photos dither acceptably)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="runs to serve side by side")
    parser.add_argument("--photo", help="photo to upload (default: a bird drawn by this script)")
    parser.add_argument("--out", default=str(REPO / "docs" / "page.png"), help="PNG to write")
    parser.add_argument("--width", type=int, default=1100, help="browser width in CSS pixels")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "src"))
    from birdshield.app import actions
    from birdshield.app.page import launch
    from birdshield.runtime import set_threads

    set_threads(1)
    blocks, url = launch(actions.load_models(args.runs), port=_free_port(), block=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    photo = Path(args.photo) if args.photo else drawn_bird(out.parent / "drawn-bird.png")
    try:
        capture(url, photo, out, args.width)
    finally:
        blocks.close()
        if not args.photo:
            photo.unlink(missing_ok=True)
    shrink(out)
    print(f"{out}: {out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
