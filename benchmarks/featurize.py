"""Featurize throughput, bag read latency and store size, measured in one run.

For each encoder: the bare model forward on pre-decoded pixels (cells/s) against the
full pipeline from JPEG files to the store (cells/s), and their ratio; where the
pipeline's time went (file reads and decoding, summed over their threads; model forward;
store writes in the writer thread; how long the model waited for images or the writer);
on a GPU, its mean utilisation during the pipeline; then the p50/p95 latency of
``store.bag()`` and the store's bytes against raw float32.

    python benchmarks/featurize.py                      # CPU, demo cohort, lite0 + ViT-S/16
    python benchmarks/featurize.py --device cuda        # + DinoBloom-B shape, ~20,000 cells
    python benchmarks/featurize.py --device cuda --decode cpu   # the PIL path beside a GPU
    python benchmarks/featurize.py --data DIR --compare   # a real cohort folder, glibc
                                                          # malloc as is vs tuned, one table

Each pipeline run also reports the process's CPU time split (``resource.getrusage``: user
and system seconds, system's share) and minor page faults beside cells/s. With glibc's
default thresholds every batch's activation buffers are mmap'd, unmapped and faulted in
again page by page (sys time); featurize tunes the allocator at start-up
(:mod:`cellbag.core.allocator`): ``--allocator default`` measures glibc as it is,
``--compare`` runs both in fresh processes and prints them side by side.

Encoders: EfficientNet-Lite0 (the package's ImageNet weights), ViT-S/16 and the
DinoBloom-B shape (``vit_base_patch14_dinov2`` at 224 px), both with random weights
(the speed does not depend on the weights). On a GPU, precision is bf16 (the encoders'
``auto``) and images are decoded on the GPU (``--decode auto``).

On a loaded machine the ratio measures the scheduler too: Linux shares CPU per thread, so
the pipeline (torch, decode and writer threads) can get more of the machine than the bare
forward (ratios above 1 under load 10-12). ``--rounds`` repeats bare/pipeline pairs; the
forward's share of the pipeline loop's wall time does not depend on the load.

Targets on 2 CPU cores: pipeline/bare >= 0.95, system time < 10 % of the pipeline's CPU
time, bag read p50 <= 2 ms, bytes <= 0.5 x fp32.
On an H100/H200 (``--device cuda``, ViT-S/16 bf16): >= 6,000 cells/s from JPEG files and
pipeline/bare >= 0.7.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENCODERS = {  # name -> weights
    "tf_efficientnet_lite0": "package:efficientnet-lite0",
    "vit_small_patch16_224": "none",
    "dinobloom_b": "none",  # vit_base_patch14_dinov2 at 224 px
}
CPU_ENCODERS = ["tf_efficientnet_lite0", "vit_small_patch16_224"]  # ViT-B/14: ~3 cells/s here


def bare_forward(
    enc, pixels: np.ndarray, batch_size: int, usage: list | None = None
) -> tuple[float, np.ndarray]:
    """Cells/s of the model alone on pre-decoded uint8 pixels, and the embeddings.

    On a GPU the pixels are uploaded once beforehand: the figure is the model's alone.
    ``usage`` gets the :class:`Usage` of the timed passes (not the warm-up batch).
    """
    import torch

    x = torch.from_numpy(pixels)
    gpu = enc.device.startswith("cuda")
    if gpu:
        x = x.to(enc.device)
    enc.forward_pixels(x[:batch_size])  # warm-up
    if gpu:
        torch.cuda.synchronize()
    with Usage() as use:
        t = time.perf_counter()
        out = [enc.forward_pixels(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        if gpu:
            torch.cuda.synchronize()
        rate = len(x) / (time.perf_counter() - t)
    if usage is not None:
        usage.append(use)
    return rate, torch.cat(out).numpy()


class GpuSampler:
    """Mean GPU utilisation (%) while running: ``torch.cuda.utilization`` (needs pynvml),
    else ``nvidia-smi``, else unavailable (``mean`` is None)."""

    def __init__(self, device: str, every: float = 0.1) -> None:
        import threading

        self.device, self.every = device, every
        self.samples: list[float] = []
        self.source = "n/a"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        import subprocess

        import torch

        if self.source in ("n/a", "torch"):
            try:
                v = float(torch.cuda.utilization(torch.device(self.device)))
                self.source = "torch"
                return v
            except Exception:  # noqa: BLE001 - pynvml missing: try nvidia-smi
                if self.source == "torch":
                    return None
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5, check=True,
                ).stdout.split()  # fmt: skip
                self.source = "nvidia-smi"
                return float(out[0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            v = self._read()
            if v is None:
                self.source = "n/a"
                return
            self.samples.append(v)
            self._stop.wait(self.every)

    def __enter__(self) -> GpuSampler:
        if self.device.startswith("cuda"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


class Usage:
    """Wall time, CPU time (user, sys) and minor page faults of this process over a block."""

    def __enter__(self) -> Usage:
        self._r, self._t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - self._t
        self.user = r.ru_utime - self._r.ru_utime
        self.sys = r.ru_stime - self._r.ru_stime
        self.faults = r.ru_minflt - self._r.ru_minflt

    @property
    def sys_share(self) -> float:
        return self.sys / max(self.user + self.sys, 1e-9)

    def to_dict(self) -> dict[str, float]:
        return {
            "wall_s": round(self.wall, 2),
            "user_s": round(self.user, 2),
            "sys_s": round(self.sys, 2),
            "sys_share": round(self.sys_share, 3),
            "minor_faults": int(self.faults),
        }

    def line(self, cells: int) -> str:
        return (
            f"user {self.user:.1f} s, sys {self.sys:.1f} s ({100 * self.sys_share:.1f} % of "
            f"CPU), wall {self.wall:.1f} s; {self.faults:,} minor page faults "
            f"({self.faults / max(cells, 1):,.0f} a cell)"
        )


def replicate(root: Path, times: int) -> None:
    """Copy every patient folder ``times - 1`` more times (new ids, same clinical rows).

    Generating demo images costs ~10-30 ms each on a CPU; a GPU needs ~20,000 files for a
    steady figure, and identical files decode at the same speed.
    """
    import pandas as pd

    for split, csv in (("trainset", "trainset_true.csv"), ("testset", "testset_data.csv")):
        path = root / split / csv
        if not path.exists():
            continue
        table = pd.read_csv(path, dtype=str)
        copies = []
        for k in range(1, times):
            for pid in table["ID"]:
                shutil.copytree(root / split / pid, root / split / f"{pid}x{k}")
            copies.append(table.assign(ID=table["ID"] + f"x{k}"))
        pd.concat([table, *copies]).to_csv(path, index=False)


def bag_latency(store, eid: str, n: int = 300, seed: int = 0) -> tuple[float, float]:
    """p50 and p95 (ms) of ``store.bag`` for random patients, on a freshly opened store."""
    from cellbag.store import Store

    s = Store.open(store.path)
    pids = list(s.patients()["patient_id"])
    s.bag(pids[0], eid)  # opens arrays, caches offsets/status
    rng = np.random.default_rng(seed)
    times = []
    for pid in rng.choice(pids, size=n):
        t = time.perf_counter()
        s.bag(pid, eid)
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def synthetic_bag_latency(real: np.ndarray, work: Path, patients: int, cells: int) -> tuple:
    """Bag p50/p95 on a challenge-size store (rows sampled from real embeddings)."""
    import pandas as pd

    from cellbag.data import Cohort
    from cellbag.store import Store

    pids = [f"P{i}" for i in range(patients)]
    pts = pd.DataFrame(
        {
            "patient_id": pids,
            "split": "train",
            "label": pd.array([i % 2 for i in range(patients)], dtype="Int64"),
            "gender": "M",
            "dob": pd.Timestamp("1950-01-01"),
            "lymph_count": 5.0,
        }
    )
    cell_rows = [
        {"cell_id": f"{p}/{j}.jpg", "patient_id": p, "path": f"/none/{p}/{j}.jpg"}
        for p in pids
        for j in range(cells)
    ]
    cohort = Cohort(work, "synthetic", pts, pd.DataFrame(cell_rows))
    s = Store.create(work / "synthetic.zarr", cohort)
    rng = np.random.default_rng(0)
    ok = real[np.isfinite(real).all(1)]
    s.add_embeddings("synthetic", ok[rng.integers(0, len(ok), cohort.n_cells)])
    return bag_latency(s, "synthetic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--decode", default="auto", help="auto (gpu on CUDA) | cpu | gpu")
    ap.add_argument("--patients", type=int, default=None, help="default 6 (CPU), 40 (GPU)")
    ap.add_argument(
        "--cells-per-patient", type=int, default=None, help="default 30 (CPU), 50 (GPU)"
    )
    ap.add_argument(
        "--copies", type=int, default=None, help="cohort copies: default 1 (CPU), 10 (GPU)"
    )
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (CPU), 256 (GPU)")
    ap.add_argument("--workers", type=int, default=None, help="decode (CPU) / read (GPU) threads")
    ap.add_argument("--encoders", nargs="*", default=None, help=f"from {', '.join(ENCODERS)}")
    ap.add_argument("--rounds", type=int, default=1, help="pipeline runs, each between bares")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the cohort/stores here")
    ap.add_argument(
        "--data", type=Path, default=None, help="a cohort folder or manifest (default: demo)"
    )
    ap.add_argument(
        "--allocator",
        default="tuned",
        choices=["tuned", "default"],
        help="tuned: what featurize does (cellbag.core.allocator); default: glibc as it is",
    )
    ap.add_argument(
        "--compare", action="store_true", help="run --allocator default, then tuned, and compare"
    )
    args = ap.parse_args()
    if args.compare:
        return compare(sys.argv[1:])
    if args.allocator == "default":
        os.environ["CELLBAG_MALLOC"] = "default"  # read by featurize's tune_allocator()

    import torch

    from cellbag.data import read_cohort
    from cellbag.data.demo import make_demo_cohort
    from cellbag.featurize import create_encoder, run_featurize
    from cellbag.featurize.registry import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    gpu = device.startswith("cuda")
    patients = args.patients or (40 if gpu else 6)
    per_patient = args.cells_per_patient or (50 if gpu else 30)
    copies = args.copies or (10 if gpu else 1)
    names = args.encoders or (
        list(ENCODERS) if gpu else CPU_ENCODERS[:1] if args.data else CPU_ENCODERS
    )
    work = args.keep or Path(tempfile.mkdtemp(prefix="cellbag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.data is not None:
        cohort = read_cohort(args.data)  # read in place; only the stores go to ``work``
    else:
        root = work / "demo"
        if not (root / "trainset").exists():
            make_demo_cohort(root, patients=patients, cells_per_patient=per_patient)
            replicate(root, copies)
        cohort = read_cohort(root)
    # a warm-up run first: one-time costs (imports, CUDA context, cuDNN autotuning, nvJPEG
    # set-up) stay out of the timing, as the bare forward's warm-up batch does
    warm_root = work / "warmup"
    if not (warm_root / "trainset").exists():
        make_demo_cohort(warm_root, patients=2, cells_per_patient=300 if gpu else 4, seed=9)
    warm = read_cohort(warm_root)
    batch = args.batch_size or (256 if gpu else 64 if args.data else 32)  # 64: the CLI's
    gpu_name = torch.cuda.get_device_name(device) if gpu else "none"
    print(
        f"cohort: {cohort.n_patients} patients, {cohort.n_cells} cells (224x224 JPEG, in the "
        f"page cache); device {device} ({gpu_name}); decode {args.decode}; torch threads "
        f"{torch.get_num_threads()}; cpus {os.cpu_count()}; batch {batch}; allocator "
        f"{args.allocator}; {_load()}"
    )
    results = []
    prepared: dict[tuple[int, str], np.ndarray] = {}
    for name in names:
        enc = create_encoder(
            name, weights=ENCODERS.get(name, "none"), image_size=224, device=device
        )
        key = (enc.image_size, enc.interpolation)  # PIL-decoded once per input shape
        if key not in prepared:
            prepared[key] = np.stack([enc.prepare(_open(p)) for p in cohort.cells["path"]])
        pixels = prepared[key]
        kw = dict(batch_size=batch, workers=args.workers, decode=args.decode)
        shutil.rmtree(work / f"warm-{name}.zarr", ignore_errors=True)
        run_featurize(warm, work / f"warm-{name}.zarr", enc, **kw)
        # bare forward before and after the pipeline: a shared machine's load drifts
        # rounds of bare, pipeline, bare...: each pipeline run is compared with the bare
        # forward just before and just after it (a shared machine's load drifts)
        bare_usage: list[Usage] = []
        bares = [bare_forward(enc, pixels, batch, bare_usage)[0]]
        bare_use = bare_usage[0]
        rounds = []
        store_path = work / f"{name}.zarr"
        for _ in range(args.rounds):
            shutil.rmtree(store_path, ignore_errors=True)
            with GpuSampler(device) as util, Usage() as use:
                t = time.perf_counter()
                rep = run_featurize(cohort, store_path, enc, **kw)
                wall = time.perf_counter() - t
            rate, pil_emb = bare_forward(enc, pixels, batch)
            bares.append(rate)
            b = 2 / (1 / bares[-2] + 1 / bares[-1])  # cells/s of the mean time
            rounds.append((cohort.n_cells / wall, cohort.n_cells / rep.seconds, b))
        ratios = [p / b for p, _, b in rounds]
        pipe, stream, bare = rounds[int(np.argsort(ratios)[len(ratios) // 2])]  # median round
        bare_before, bare_after = bares[0], bares[-1]
        share = rep.compute_seconds / rep.seconds  # last round: forward's share of the loop
        # the same cells' CPU seconds, bare forward over pipeline: a ratio the load does not
        # move (a loaded machine stretches wall times, not CPU time)
        cpu_ratio = (bare_use.user + bare_use.sys) / max(use.user + use.sys, 1e-9)
        store = rep.store
        p50, p95 = bag_latency(store, enc.id)
        nbytes = store.size_bytes(enc.id)
        raw = cohort.n_cells * enc.dim * 4
        real = np.asarray(store.embeddings(enc.id)[:], dtype=np.float32)
        ok = np.isfinite(real).all(1)  # the pipeline's embeddings against the PIL pixels'
        emb_diff = float(np.abs(real[ok] - pil_emb[ok]).max())  # (float16 store rounding too)
        emb_max = float(np.abs(pil_emb[ok]).max())
        sp50, sp95 = synthetic_bag_latency(real, work / f"syn-{name}", 205, 80)
        shutil.rmtree(work / f"syn-{name}", ignore_errors=True)
        split = {
            "read_s": rep.read_seconds,
            "decode_s": rep.decode_seconds,
            "forward_s": rep.compute_seconds,
            "write_s": rep.write_seconds,
            "wait_decode_s": rep.decode_wait_seconds,
            "wait_write_s": rep.write_wait_seconds,
        }
        util_txt = f"{util.mean:.0f}% ({util.source})" if util.mean is not None else "n/a"
        r = {
            "encoder": enc.id,
            "device": enc.device,
            "precision": enc.precision,
            "decode": rep.decode,
            "dim": enc.dim,
            "cells": cohort.n_cells,
            "bare_cells_per_s": round(bare, 1),
            "bare_runs": [round(v, 1) for v in bares],
            "pipeline_over_bare_rounds": [round(v, 3) for v in ratios],
            "forward_share_of_loop": round(share, 3),
            "max_abs_diff_vs_pil_path": round(emb_diff, 5),
            "pipeline_cells_per_s": round(pipe, 1),
            "pipeline_over_bare": round(pipe / bare, 3),
            "allocator": args.allocator,
            "pipeline_usage": use.to_dict(),  # the last round
            "pipeline_over_bare_cpu": round(cpu_ratio, 3),
            "bare_usage": bare_use.to_dict(),  # the first bare forward
            "streaming_cells_per_s": round(stream, 1),
            "streaming_over_bare": round(stream / bare, 3),
            "gpu_utilisation": util_txt,
            "seconds": {k: round(v, 3) for k, v in split.items()} | {"wall_s": round(wall, 3)},
            "bag_p50_ms": round(p50, 3),
            "bag_p95_ms": round(p95, 3),
            "bag80_p50_ms": round(sp50, 3),
            "bag80_p95_ms": round(sp95, 3),
            "store_bytes": nbytes,
            "bytes_over_fp32": round(nbytes / raw, 3),
        }
        results.append(r)
        target = ">= 0.7 (GPU)" if gpu else ">= 0.95"
        print(
            f"\n{enc.id} ({enc.device}, {enc.precision}, dim {enc.dim}, decode {rep.decode})\n"
            f"  bare forward     {bare:10.1f} cells/s   (runs: first {bare_before:.1f}, "
            f"last {bare_after:.1f})\n"
            f"  rounds           pipeline / bare {', '.join(f'{v:.3f}' for v in ratios)} "
            f"(the median round is shown)\n"
            f"  forward share    {share:10.3f}        of the streaming loop's wall time (last "
            f"round; immune to load drift between runs)\n"
            f"  full pipeline    {pipe:10.1f} cells/s   (files -> store, {wall:.2f} s)\n"
            f"  pipeline / bare  {pipe / bare:10.3f}        target {target}\n"
            f"  pipeline CPU     {use.line(cohort.n_cells)}   target sys < 10 %\n"
            f"  by CPU time      {cpu_ratio:10.3f}        pipeline / bare (bare forward CPU s / "
            f"pipeline CPU s, same cells; load-proof)\n"
            f"  bare forward CPU {bare_use.line(cohort.n_cells)}\n"
            f"  streaming / bare {stream / bare:10.3f}        (the same run without creating "
            f"the store and encoder arrays: {wall - rep.seconds:.2f} s)\n"
            f"  GPU utilisation  {util_txt} (mean during the pipeline)\n"
            f"  time split       read {split['read_s']:.2f} s + decode {split['decode_s']:.2f} s"
            f" (summed over threads), forward {split['forward_s']:.2f} s, write "
            f"{split['write_s']:.2f} s (writer thread); the model waited "
            f"{split['wait_decode_s']:.2f} s for images, {split['wait_write_s']:.2f} s for "
            f"the writer\n"
            f"  decode check     embeddings max abs diff {emb_diff:.4f} against the bare "
            f"forward on PIL-decoded pixels (values up to {emb_max:.2f}; float16 store)\n"
            f"  bag read         p50 {p50:.2f} ms, p95 {p95:.2f} ms "
            f"(bags of ~{cohort.n_cells // cohort.n_patients})   target p50 <= 2 ms\n"
            f"  bag read, 80/bag p50 {sp50:.2f} ms, p95 {sp95:.2f} ms (205 patients x 80)\n"
            f"  store bytes      {nbytes:,} = {nbytes / raw:.3f} x raw fp32   target <= 0.5"
        )
    print(f"\n{_load()}")
    print(json.dumps(results))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def compare(argv: list[str]) -> None:
    """Run this benchmark with glibc's default allocator, then tuned, and tabulate both."""
    argv = [a for a in argv if a != "--compare"]
    rows = {}
    for mode in ("default", "tuned"):
        print(f"--- allocator {mode} (a fresh process)", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, *argv, "--allocator", mode],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout
        print(out, flush=True)
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    print("allocator  encoder                        cells  wall s  user s  sys s  sys %  "
          "minor faults  cells/s  pipeline/bare  by CPU time")  # fmt: skip
    for mode, results in rows.items():
        for r in results:
            u = r["pipeline_usage"]
            print(f"{mode:<10} {r['encoder'][:30]:<30} {r['cells']:>5} {u['wall_s']:>7.1f} "
                  f"{u['user_s']:>7.1f} {u['sys_s']:>6.1f} {100 * u['sys_share']:>6.1f} "
                  f"{u['minor_faults']:>13,} {r['pipeline_cells_per_s']:>8.1f} "
                  f"{r['pipeline_over_bare']:>14.3f} {r['pipeline_over_bare_cpu']:>12.3f}")  # fmt: skip


def _load() -> str:
    try:
        return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not Unix
        return "load average n/a"


def _open(path: str):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.copy()


if __name__ == "__main__":
    main()
