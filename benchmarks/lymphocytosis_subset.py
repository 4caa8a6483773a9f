"""A subset of whole patients of a challenge-layout cohort, small enough to travel.

    python benchmarks/lymphocytosis_subset.py DATA [OUT] [--max-mb 45] [--seed 0]

The lent GPU machine receives at most 64 MiB of working tree (the repository, the wheels
it lacks and this subset together), so the real cohort (~250 MB) cannot travel whole.
This copies whole patients of DATA (a challenge-layout folder: ``trainset/``,
``testset/``) into OUT in the same layout: the kept patients' folders and their rows of
``trainset/trainset_true.csv`` and ``testset/testset_data.csv``, byte for byte. Patients
are drawn at random (seeded): the training split stratified by label and the test split
in proportion to its share, each group's patients in a shuffled order interleaved by
their rank within the group (a systematic sample), and a patient is kept when it still
fits under ``--max-mb`` (10^6 bytes of files). It prints patients, cells and MB per
split and writes ``OUT/SUBSET.json`` (source, seed, cap, patient ids).

OUT defaults to ``gpu_subset/`` in the repository (ignored by git) and must be a folder
that git ignores or one outside any git work tree: the images, and anything derived from
them, are never committed. An existing OUT is replaced only when it is an earlier subset
(it holds ``SUBSET.json``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SPLITS = {"train": ("trainset", "trainset_true.csv"), "test": ("testset", "testset_data.csv")}
MARK = "SUBSET.json"
REPO = Path(__file__).resolve().parents[1]


def read_rows(csv_path: Path) -> tuple[str, list[tuple[str, str, str]]]:
    """The header line and, per data row, ``(id, label, raw line)`` (the raw line kept
    byte for byte, its line ending included)."""
    with open(csv_path, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if not lines:
        sys.exit(f"{csv_path}: empty")
    header = next(csv.reader([lines[0]]))
    cols = {c.strip().upper(): i for i, c in enumerate(header)}
    if "ID" not in cols:
        sys.exit(f"{csv_path}: no ID column")
    rows = []
    for line in lines[1:]:
        if not line.strip():
            continue
        rec = next(csv.reader(io.StringIO(line)))
        label = rec[cols["LABEL"]].strip() if "LABEL" in cols else "-1"
        rows.append((rec[cols["ID"]].strip(), label, line))
    return lines[0], rows


def folder_size(folder: Path) -> tuple[int, int]:
    """``(bytes, image files)`` of a patient's folder."""
    files = [f for f in folder.iterdir() if f.is_file()]
    images = [f for f in files if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")]
    return sum(f.stat().st_size for f in files), len(images)


def draw_order(groups: dict[str, list[str]], seed: int) -> list[tuple[str, str]]:
    """Every group's members shuffled, then merged by ``(rank + offset) / size``: any
    prefix of the order holds each group in about its share of the whole."""
    rng = np.random.default_rng(seed)
    keyed = []
    for g in sorted(groups):
        members = list(groups[g])
        order = rng.permutation(len(members))
        offset = rng.random()
        keyed += [((r + offset) / len(members), g, members[i]) for r, i in enumerate(order)]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [(g, pid) for _, g, pid in keyed]


def check_out(out: Path, data: Path) -> None:
    """Refuse an OUT that git would track, one inside DATA, or a folder that is not ours."""
    out_abs, data_abs = out.resolve(), data.resolve()
    if out_abs == data_abs or data_abs in out_abs.parents or out_abs in data_abs.parents:
        sys.exit(f"{out}: overlaps the cohort {data}; choose another folder")
    probe = out_abs
    while not probe.exists():
        probe = probe.parent
    top = subprocess.run(
        ["git", "-C", str(probe), "rev-parse", "--show-toplevel"], capture_output=True, text=True
    )
    if top.returncode == 0:
        ignored = subprocess.run(
            ["git", "-C", top.stdout.strip(), "check-ignore", "-q", str(out_abs / MARK)]
        )
        if ignored.returncode != 0:
            sys.exit(
                f"{out}: git would track it (patient images must never be committed); use "
                "gpu_subset/ or a folder listed in .gitignore"
            )
    if out.exists() and any(out.iterdir()):
        if not (out / MARK).is_file():
            sys.exit(f"{out}: exists, is not empty and is not an earlier subset; choose another")
        shutil.rmtree(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="a challenge-layout cohort folder")
    ap.add_argument("out", type=Path, nargs="?", default=REPO / "gpu_subset")
    ap.add_argument("--max-mb", type=float, default=45.0, help="cap on the copied bytes, MB")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data, out = args.data, args.out
    cap = int(args.max_mb * 1e6)

    tables, groups, sizes = {}, {}, {}
    for split, (folder, name) in SPLITS.items():
        path = data / folder / name
        if not path.is_file():
            if split == "train":
                sys.exit(f"{path}: not found (DATA must be a challenge-layout folder)")
            continue
        header, rows = read_rows(path)
        tables[split] = (header, rows)
        for pid, label, _ in rows:
            pdir = data / folder / pid
            if not pdir.is_dir():
                continue  # a row without images: nothing to carry
            sizes[(split, pid)] = folder_size(pdir)
            group = f"train label {label}" if split == "train" else "test"
            groups.setdefault(group, []).append(f"{split}/{pid}")
    if not groups:
        sys.exit(f"{data}: no patient folder found")

    kept: dict[str, list[str]] = {s: [] for s in tables}
    total = 0
    for _, key in draw_order(groups, args.seed):
        split, pid = key.split("/", 1)
        size = sizes[(split, pid)][0]
        if total + size <= cap:
            kept[split].append(pid)
            total += size
    if not any(kept.values()):
        sys.exit(f"no patient fits under {args.max_mb:g} MB; raise --max-mb")

    check_out(out, data)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "source": str(data.resolve()),
        "seed": args.seed,
        "max_mb": args.max_mb,
        "splits": {},
    }
    for split, (header, rows) in tables.items():
        folder, name = SPLITS[split]
        keep = set(kept[split])
        (out / folder).mkdir(parents=True, exist_ok=True)
        lines = [header] + [line for pid, _, line in rows if pid in keep]
        with open(out / folder / name, "w", newline="") as f:
            f.write("".join(lines))
        for pid in kept[split]:
            shutil.copytree(data / folder / pid, out / folder / pid)
        labels = {pid: label for pid, label, _ in rows}
        by_label: dict[str, int] = {}
        for pid in kept[split]:
            by_label[labels[pid]] = by_label.get(labels[pid], 0) + 1
        summary["splits"][split] = {
            "patients": sorted(kept[split], key=lambda p: (len(p), p)),
            "by_label": dict(sorted(by_label.items())),
            "cells": sum(sizes[(split, p)][1] for p in kept[split]),
            "bytes": sum(sizes[(split, p)][0] for p in kept[split]),
            "of_patients": sum(1 for s, _ in sizes if s == split),
        }
    (out / MARK).write_text(json.dumps(summary, indent=1) + "\n")

    print(f"{out}: whole patients of {data}, seed {args.seed}, cap {args.max_mb:g} MB")
    for split, s in summary["splits"].items():
        labels = ", ".join(f"label {k}: {v}" for k, v in s["by_label"].items())
        labels = f" ({labels})" if split == "train" else ""
        print(
            f"  {split}: {len(s['patients'])} of {s['of_patients']} patients{labels}, "
            f"{s['cells']} cells, {s['bytes'] / 1e6:.1f} MB"
        )
    cells = sum(s["cells"] for s in summary["splits"].values())
    n = sum(len(s["patients"]) for s in summary["splits"].values())
    print(f"  total: {n} patients, {cells} cells, {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
