"""Regenerate docs/figures/report_healthy_vs_collapsing.png: the top of two run reports side by side.

    python docs/figures/make_report_screenshot.py [--out-dir /tmp/reportdocs] [--epochs 20]

Trains BYOL on digits (healthy) and SimSiam without stop-gradient (collapses: dimensional collapse
of the projector output from about epoch 5 of 20), writes each run's report.html, screenshots the
top of each with headless Chromium and puts the two side by side. About a minute on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
OUT = HERE / "report_healthy_vs_collapsing.png"
RUNS = (("healthy", ["byol", "digits"], "BYOL (healthy)"),
        ("collapsing", ["simsiam", "digits", "method.stop_gradient=false"], "SimSiam without stop-gradient (collapsing)"))
WINDOW = (1100, 1500)  # css pixels of each screenshot: the summary, the verdicts and the alarms
SCALE = 0.62


def train(out_dir: Path, name: str, args: list[str], epochs: int) -> Path:
    run = out_dir / name
    shutil.rmtree(run, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "collapselab", "train", *args, f"train.epochs={epochs}",
                    f"run.out_dir={out_dir}", "log.progress=false", "--name", name], check=True,
                   stdout=subprocess.DEVNULL)
    return run


def screenshot(report: Path, png: Path) -> Image.Image:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--hide-scrollbars", f"--user-data-dir={profile}",
                        f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={png}", report.resolve().as_uri()],
                       check=True, capture_output=True, timeout=60)
    return Image.open(png).convert("RGB")


def side_by_side(images: list[Image.Image], captions: list[str]) -> Image.Image:
    width, height = (round(v * SCALE) for v in images[0].size)
    band, gap = 34, 12
    sheet = Image.new("RGB", (len(images) * width + (len(images) - 1) * gap, height + band), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x = i * (width + gap)
        sheet.paste(image.resize((width, height), Image.LANCZOS), (x, band))
        draw.text((x + 12, 10), caption, fill="#1d2733", font_size=18)
        if i:
            draw.line([(x - gap // 2, 0), (x - gap // 2, height + band)], fill="#c0c6cc", width=2)
    return sheet


def main() -> None:
    from collapselab.report import write_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()) / "reportdocs")
    parser.add_argument("--epochs", type=int, default=20, help="the digits recipes' 20; SimSiam needs ~6 to collapse")
    args = parser.parse_args()
    images = []
    for name, train_args, _ in RUNS:
        run = train(args.out_dir, name, train_args, args.epochs)
        images.append(screenshot(write_report(run), args.out_dir / f"{name}.png"))
    sheet = side_by_side(images, [caption for *_, caption in RUNS])
    sheet.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(OUT, optimize=True)
    print(f"{OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
