"""What the larger offline encoders cost: cells/s of EfficientNet-Lite0/1/2 on CPU.

Each preset (its package's ImageNet weights, its own input size: 224/240/260 px) embeds
the same ~256 real crops, decoded and resized beforehand, on CPU with 2 torch threads;
the first batch of each round is a warm-up and is not timed. Rounds interleave the
encoders so that a change in the machine's load hits all of them alike; the table gives
the best and the median round, and cells per CPU second of the process (all threads),
which a loaded machine disturbs less than wall time.

    python benchmarks/encoders_cost.py                      # synthetic demo cohort
    python benchmarks/encoders_cost.py DIR [DIR ...]        # crops under these folders
    python benchmarks/encoders_cost.py DIR --cells 512 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENCODERS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def crop_files(folders: list[Path], n: int) -> list[Path]:
    """The first ``n`` image files under ``folders`` (recursive, in sorted order)."""
    files = sorted(
        p for d in folders for p in d.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
    )
    if not files:
        sys.exit(f"no images under {', '.join(map(str, folders))}")
    return files[:n]


def demo_folder(tmp: Path) -> Path:
    """A synthetic cohort written by `cellbag demo-data` (8 patients x 40 cells)."""
    out = tmp / "demo"
    cmd = [sys.executable, "-m", "cellbag", "demo-data", str(out), "--patients", "8"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def steady_rate(enc, pixels: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Cells per wall second and per CPU second (all threads) of ``enc.forward_pixels``
    over ``pixels``, the first batch not timed."""
    enc.forward_pixels(pixels[:batch_size])
    rest = pixels[batch_size:]
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(rest), batch_size):
        enc.forward_pixels(rest[i : i + batch_size])
    return len(rest) / (time.perf_counter() - t), len(rest) / (time.process_time() - cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path, help="crop folders (default: demo cohort)")
    ap.add_argument("--cells", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import torch
    from PIL import Image

    from cellbag.featurize import create_encoder

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = args.folders or [demo_folder(Path(tmp))]
        files = crop_files(folders, args.cells)
        images = [Image.open(f).convert("RGB") for f in files]
    if len(images) <= args.batch_size:
        sys.exit(f"{len(images)} crops: need more than one batch ({args.batch_size})")
    encoders = {name: create_encoder(name, device="cpu") for name in ENCODERS}
    pixels = {n: np.stack([e.prepare(im) for im in images]) for n, e in encoders.items()}
    rates: dict[str, list[tuple[float, float]]] = {n: [] for n in ENCODERS}
    for _ in range(args.rounds):
        for name, enc in encoders.items():
            rates[name].append(steady_rate(enc, pixels[name], args.batch_size))

    where = ", ".join(map(str, args.folders)) or "demo cohort (cellbag demo-data)"
    print(f"{len(images)} crops from {where}; CPU, {args.threads} threads, batch "
          f"{args.batch_size}, {args.rounds} round(s), first batch of each not timed; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    base = max(rates[ENCODERS[0]])[0]
    print(f"{'encoder':24s} {'px':>4s} {'cells/s best':>12s} {'median':>8s} "
          f"{'vs lite0':>9s} {'cells/CPU-s':>12s}")  # fmt: skip
    for name, enc in encoders.items():
        wall = [w for w, _ in rates[name]]
        cpu = max(c for _, c in rates[name])
        print(f"{name:24s} {enc.image_size:4d} {max(wall):12.1f} {statistics.median(wall):8.1f} "
              f"{max(wall) / base:8.2f}x {cpu:12.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
