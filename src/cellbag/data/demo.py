"""A seeded synthetic cohort of blood-smear crops with a known ground truth.

Each crop is 224×224 RGB: a pink smear background with red cells (central pallor)
and one centred lymphocyte. The lymphocyte's morphology depends on its type:

- ``normal``: medium lymphocyte, round purple nucleus, a moderate rim of blue cytoplasm;
- ``activated``: large reactive lymphocyte, paler irregular nucleus, abundant cytoplasm;
- ``small_mature``: small CLL-like lymphocyte, dense round dark nucleus, thin rim, coarse
  clumped chromatin (a witness of tumoral bags);
- ``smudge``: a crushed, smeared nucleus without cytoplasm (a witness of tumoral bags);
- ``cleaved``: a normal lymphocyte's size and colours with a deeply lobed, clover-like
  nucleus (a witness of tumoral bags that differs by shape only).

Tumoral bags hold a patient-specific fraction of witness cells among cells of the kinds
both classes hold. The ground truth is written to ``OUT/ground_truth.csv`` (``cell_id,
..., is_key``), never to the cohort's CSVs.

Presets (``make_demo_cohort(preset=...)``, ``cellbag demo-data --preset``):

- ``default`` (what ``make demo`` runs): what MIL exists for, with clinical data beside.
  Tumoral bags hold 5–15 % ``cleaved`` cells, except about a fifth of tumoral patients
  whose smear shows none (``silent``: images alone cannot call them); every patient has
  its own stain shift (a colour cast and contrast of the whole slide) and its own mix of
  normal and activated cells, which move the bag mean more than the few key cells do; age
  and lymphocyte count carry a real but partial signal of their own (older patients,
  higher counts when tumoral; together ROC AUC ~0.85). Attention pooling should beat mean
  pooling, and fusion should beat images alone (``benchmarks/demo_presets.py`` measures
  both).
- ``fusion``: images and clinical values each carry an independent, partial signal of
  about the same strength (3–12 % small mature and smudge cells; overlapping ages and
  counts), so neither alone is enough and late fusion of the two should beat both.
- ``rare-key``: attention's hardest case. Tumoral bags hold 2–6 % ``cleaved`` key cells,
  with the default preset's stain shift and per-patient cell mix, and clinical values
  carry no signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

CELL_TYPES = ("normal", "activated", "small_mature", "smudge", "cleaved")
WITNESS_TYPES = ("small_mature", "smudge", "cleaved")
REFERENCE_DATE = pd.Timestamp("2020-01-01")
SIZE = 224

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] at SIZE×SIZE (bilinear upsampling of a coarse grid)."""
    g = rng.standard_normal((scale, scale)).astype(np.float32)
    img = Image.fromarray(g).resize((SIZE, SIZE), Image.BILINEAR)
    a = np.asarray(img, dtype=np.float32)
    return a / (np.abs(a).max() + 1e-6)


def _ellipse(cx: float, cy: float, rx: float, ry: float, theta: float, wobble=None) -> np.ndarray:
    """Soft mask (0..1) of a rotated ellipse, optionally with a wobbly outline.

    Only the ellipse's bounding window is computed (the rest of the mask is zero).
    """
    mask = np.zeros((SIZE, SIZE), np.float32)
    reach = max(rx, ry) * (1.6 if wobble else 1.1) + 2
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, SIZE)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, SIZE)
    if y0 >= y1 or x0 >= x1:
        return mask
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = _XX[y0:y1, x0:x1] - cx, _YY[y0:y1, x0:x1] - cy
    u = (c * dx + s * dy) / rx
    v = (-s * dx + c * dy) / ry
    r = np.sqrt(u * u + v * v)
    if wobble is not None:
        ang = np.arctan2(v, u)
        r = r / (1.0 + sum(a * np.cos(k * ang + p) for k, a, p in wobble))
    mask[y0:y1, x0:x1] = np.clip((1.0 - r) * min(rx, ry) / 1.5 + 0.5, 0.0, 1.0)
    return mask


def _paint(img: np.ndarray, mask: np.ndarray, color) -> None:
    """Alpha-blend ``color`` into ``img`` where ``mask`` > 0 (only over its bounding window)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return
    win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    m = mask[win][..., None]
    img[win] = img[win] * (1.0 - m) + m * np.asarray(color, dtype=np.float32)


def render_cell(
    cell_type: str, rng: np.random.Generator, stain: tuple[np.ndarray, np.ndarray] | None = None
) -> Image.Image:
    """One 224×224 RGB crop with a centred lymphocyte of ``cell_type``; ``stain`` =
    (per-channel gain, per-channel offset) applied to the whole crop (a slide's cast)."""
    bg = np.array([236, 204, 214], np.float32) + rng.normal(0, 4, 3)
    img = np.ones((SIZE, SIZE, 3), np.float32) * bg
    img += _smooth_noise(rng, 6)[..., None] * 6.0
    # red cells: discs with a pale centre, scattered around the lymphocyte
    for _ in range(int(rng.integers(5, 11))):
        ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(45, 140)
        cx, cy = SIZE / 2 + dist * np.cos(ang), SIZE / 2 + dist * np.sin(ang)
        r = rng.uniform(19, 26)
        red = np.array([212, 118, 128], np.float32) + rng.normal(0, 6, 3)
        _paint(img, _ellipse(cx, cy, r, r * rng.uniform(0.88, 1.0), rng.uniform(0, np.pi)), red)
        pallor = _ellipse(cx, cy, r * 0.45, r * 0.45, 0.0) * 0.55
        _paint(img, pallor, red * 0.25 + bg * 0.75)
    cx, cy = SIZE / 2 + rng.normal(0, 3), SIZE / 2 + rng.normal(0, 3)
    theta = rng.uniform(0, np.pi)
    tex = _smooth_noise(rng, 28)
    if cell_type == "smudge":
        wob = [(k, rng.uniform(0.08, 0.22), rng.uniform(0, 6.3)) for k in (2, 3, 5)]
        rx, ry = rng.uniform(34, 48), rng.uniform(24, 36)
        m = _ellipse(cx, cy, rx, ry, theta, wob)
        col = np.array([150, 110, 175], np.float32) + rng.normal(0, 8, 3)
        _paint(img, m * 0.85, col)
        streak = _ellipse(
            cx + rng.normal(0, 8), cy + rng.normal(0, 8), rx * 1.3, ry * 0.35, theta, wob
        )
        _paint(img, streak * 0.35 * (0.6 + 0.4 * tex), col * 0.9)
    else:
        p = {
            "normal": dict(
                rn=(25, 30),
                rim=(6, 11),
                nuc=(92, 58, 138),
                cyt=(168, 178, 222),
                ecc=0.08,
                clump=0.10,
            ),
            "activated": dict(
                rn=(29, 36),
                rim=(15, 26),
                nuc=(118, 84, 160),
                cyt=(140, 158, 214),
                ecc=0.18,
                clump=0.06,
            ),
            "small_mature": dict(
                rn=(20, 25),
                rim=(2, 5),
                nuc=(62, 34, 102),
                cyt=(176, 182, 222),
                ecc=0.04,
                clump=0.30,
            ),
            # a normal lymphocyte's colours and size, with a deeply lobed nucleus
            "cleaved": dict(
                rn=(25, 30),
                rim=(6, 11),
                nuc=(92, 58, 138),
                cyt=(168, 178, 222),
                ecc=0.08,
                clump=0.10,
                lobes=(0.45, 0.55),
            ),
        }[cell_type]
        rn = rng.uniform(*p["rn"])
        rc = rn + rng.uniform(*p["rim"])
        cyt = np.array(p["cyt"], np.float32) + rng.normal(0, 6, 3)
        _paint(img, _ellipse(cx, cy, rc, rc * rng.uniform(0.85, 1.0), theta), cyt)
        wob = [(k, rng.uniform(0, p["ecc"]), rng.uniform(0, 6.3)) for k in (2, 3)]
        if p.get("lobes"):  # three or four deep lobes: a clover-like outline
            wob = [(int(rng.integers(3, 5)), rng.uniform(*p["lobes"]), rng.uniform(0, 6.3))]
        off = (rc - rn) * 0.4
        ncx, ncy = cx + rng.uniform(-off, off), cy + rng.uniform(-off, off)
        nm = _ellipse(ncx, ncy, rn, rn * rng.uniform(0.85, 1.0), theta, wob)
        nuc = np.array(p["nuc"], np.float32) + rng.normal(0, 6, 3)
        _paint(img, nm, nuc)
        # chromatin: clumps darken, the rest lightens a little
        chrom = np.clip(tex, -1, 1) * p["clump"] + _smooth_noise(rng, 56) * 0.05
        img -= (nm * chrom * 120.0)[..., None] * np.array([0.8, 0.9, 0.7], np.float32)
        if cell_type == "activated" and rng.random() < 0.6:  # a nucleolus
            _paint(
                img,
                _ellipse(ncx + rng.normal(0, 6), ncy + rng.normal(0, 6), 4, 4, 0) * 0.6,
                nuc * 1.25,
            )
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)
    if stain is not None:
        gain, offset = stain
        img = (img - 128.0) * np.asarray(gain, np.float32) + 128.0 + np.asarray(offset, np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return out.filter(ImageFilter.GaussianBlur(radius=0.8))


def _format_dob(dob: pd.Timestamp, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        return f"{dob.month}/{dob.day}/{dob.year}"
    return f"{dob.day}-{dob.month}-{dob.year}"


#: cohort presets: witness cells (fraction range in tumoral bags, share of each witness
#: type), the cell mix of reactive bags and of the rest of tumoral bags (each patient's own
#: mix drawn around it when ``mix_concentration`` is set: a Dirichlet of that total), how
#: strongly clinical values depend on the label, and the per-patient stain shift (gain sd,
#: offset sd); ``exact_witnesses``: a tumoral bag holds exactly its drawn share (at least one);
#: ``silent``: the share of tumoral patients whose bag holds no witness cell at all
PRESETS: dict[str, dict] = {
    "default": {
        "witness_fraction": (0.05, 0.15),
        "witness_mix": {"cleaved": 1.0},
        "tumoral_rest": {"normal": 0.6, "activated": 0.4},
        "reactive": {"normal": 0.6, "activated": 0.4},
        "mix_concentration": 5.0,
        "clinical": "moderate",
        "stain": (0.08, 14.0),
        "exact_witnesses": True,
        "silent": 0.2,
    },
    "fusion": {
        "witness_fraction": (0.03, 0.12),
        "witness_mix": {"small_mature": 0.7, "smudge": 0.3},
        "tumoral_rest": {"normal": 0.7, "activated": 0.3},
        "reactive": {"normal": 0.55, "activated": 0.40, "small_mature": 0.05},
        "clinical": "partial",
        "stain": (0.0, 0.0),
    },
    "rare-key": {
        "witness_fraction": (0.02, 0.06),
        "witness_mix": {"cleaved": 1.0},
        "tumoral_rest": {"normal": 0.6, "activated": 0.4},
        "reactive": {"normal": 0.6, "activated": 0.4},
        "mix_concentration": 5.0,
        "clinical": "none",
        "stain": (0.08, 14.0),
        # the drawn fraction is exact (rounded, at least one key cell per tumoral bag)
        "exact_witnesses": True,
    },
}
#: (tumoral, reactive) age mean/sd and log lymphocyte count mean/sd per clinical strength
_CLINICAL = {
    # the default preset's: age and count each AUC ~0.75-0.8, together ~0.85
    "moderate": (((67, 11), (np.log(14), 0.7)), ((54, 15), (np.log(6.5), 0.6))),
    # about as informative as the fusion preset's images (age and count each AUC ~0.75)
    "partial": (((65, 12), (np.log(10), 0.7)), ((55, 12), (np.log(5.5), 0.7))),
    "none": (((60, 15), (np.log(8), 0.7)), ((60, 15), (np.log(8), 0.7))),
}


def _mix(parts: dict[str, float], scale: float = 1.0) -> np.ndarray:
    """Probabilities over CELL_TYPES from a {type: share} dict, times ``scale``."""
    return np.array([parts.get(t, 0.0) for t in CELL_TYPES]) * scale


def _patient_mix(
    parts: dict[str, float], rng: np.random.Generator, concentration: float | None
) -> dict[str, float]:
    """One patient's shares of ``parts``: the shares themselves, or a Dirichlet draw around
    them (``concentration`` = its total; smaller = patients differ more)."""
    if not concentration:
        return parts
    names = list(parts)
    draw = rng.dirichlet([concentration * parts[t] for t in names])
    return dict(zip(names, draw, strict=True))


def make_demo_cohort(
    out: str | Path,
    patients: int = 60,
    cells_per_patient: int = 40,
    seed: int = 0,
    test_fraction: float = 0.2,
    positive_fraction: float = 0.6,
    witness_fraction: tuple[float, float] | None = None,
    preset: str = "default",
) -> Path:
    """Write a synthetic cohort in the challenge layout under ``out`` and return its path.

    ``patients`` in all, about ``test_fraction`` of them in the test split; bag sizes vary
    around ``cells_per_patient`` (±25%). Each tumoral bag draws its fraction of witness
    cells uniformly in ``witness_fraction`` (the preset's range when None). ``preset``
    is one of :data:`PRESETS`. Deterministic for a seed.
    """
    if patients < 2:
        raise ValueError("make_demo_cohort: need at least 2 patients")
    if preset not in PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; choose from {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    witness_fraction = witness_fraction or cfg["witness_fraction"]
    (age_pos, cnt_pos), (age_neg, cnt_neg) = _CLINICAL[cfg["clinical"]]
    gain_sd, offset_sd = cfg["stain"]
    out = Path(out)
    rng = np.random.default_rng(seed)
    n_test = int(round(patients * test_fraction))
    n_train = patients - n_test
    # stratify labels so each split holds both classes when it can
    labels = np.zeros(patients, int)
    for lo, hi in ((0, n_train), (n_train, patients)):
        n = hi - lo
        n_pos = int(round(n * positive_fraction))
        if n >= 2:
            n_pos = min(max(n_pos, 1), n - 1)
        lab = np.array([1] * n_pos + [0] * (n - n_pos))
        rng.shuffle(lab)
        labels[lo:hi] = lab
    ids = [f"P{i}" for i in rng.permutation(np.arange(1, patients + 1) * 3 + 10)]
    truth = []
    csv_rows = {"train": [], "test": []}
    for i, (pid, y) in enumerate(zip(ids, labels, strict=True)):
        split = "train" if i < n_train else "test"
        folder = out / ("trainset" if split == "train" else "testset") / pid
        folder.mkdir(parents=True, exist_ok=True)
        conc = cfg.get("mix_concentration")
        if y == 1:
            w = rng.uniform(*witness_fraction)
            if cfg.get("silent") and rng.random() < cfg["silent"]:
                w = 0.0  # a tumoral smear that shows no key cell
            rest_mix = _patient_mix(cfg["tumoral_rest"], rng, conc)
            probs = _mix(rest_mix, 1 - w) + _mix(cfg["witness_mix"], w)
            age = rng.normal(*age_pos)
            count = float(np.exp(rng.normal(*cnt_pos)))
        else:
            probs = _mix(_patient_mix(cfg["reactive"], rng, conc))
            age = rng.normal(*age_neg)
            count = float(np.exp(rng.normal(*cnt_neg)))
        stain = None
        if gain_sd or offset_sd:
            stain = (1.0 + rng.normal(0, gain_sd, 3), rng.normal(0, offset_sd, 3))
        age = float(np.clip(age, 18, 98))
        dob = REFERENCE_DATE - pd.Timedelta(days=int(age * 365.25))
        gender = rng.choice(["M", "F", "m", "f"], p=[0.42, 0.42, 0.08, 0.08])
        n_cells = max(1, int(round(cells_per_patient * rng.uniform(0.75, 1.25))))
        if y == 1 and cfg.get("exact_witnesses"):
            n_key = min(n_cells, max(int(w > 0), int(round(w * n_cells))))
            rest = _mix(rest_mix)
            types = rng.choice(len(CELL_TYPES), size=n_cells, p=rest / rest.sum())
            key = _mix(cfg["witness_mix"])
            pos = rng.choice(n_cells, size=n_key, replace=False)
            types[pos] = rng.choice(len(CELL_TYPES), size=n_key, p=key / key.sum())
        else:
            types = rng.choice(len(CELL_TYPES), size=n_cells, p=probs / probs.sum())
        for j, t in enumerate(types):
            name = CELL_TYPES[t]
            fname = f"{j:06d}.jpg"
            render_cell(name, rng, stain).save(folder / fname, quality=92)
            truth.append(
                {
                    "patient_id": pid,
                    "cell_id": f"{pid}/{fname}",
                    "file": f"{folder.parent.name}/{pid}/{fname}",
                    "cell_type": name,
                    "witness": int(y == 1 and name in WITNESS_TYPES),
                    "is_key": int(y == 1 and name in WITNESS_TYPES),
                    "label": int(y),
                    "split": split,
                }
            )
        csv_rows[split].append(
            {
                "ID": pid,
                "LABEL": int(y) if split == "train" else -1,
                "GENDER": str(gender),
                "DOB": _format_dob(dob, rng),
                "LYMPH_COUNT": round(count, 2),
            }
        )
    (out / "trainset").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(csv_rows["train"]).to_csv(out / "trainset" / "trainset_true.csv", index=False)
    if csv_rows["test"]:
        (out / "testset").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(csv_rows["test"]).to_csv(out / "testset" / "testset_data.csv", index=False)
    pd.DataFrame(truth).to_csv(out / "ground_truth.csv", index=False)
    return out


def contact_sheet(out_png: str | Path, seed: int = 0, per_type: int = 6, thumb: int = 112) -> Path:
    """A contact sheet: one row per cell type, ``per_type`` crops each, captioned."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    label_w = 150
    sheet = Image.new("RGB", (label_w + per_type * thumb, len(CELL_TYPES) * thumb), "white")
    draw = ImageDraw.Draw(sheet)
    for r, name in enumerate(CELL_TYPES):
        who = "tumoral witness" if name in WITNESS_TYPES else "both classes"
        draw.text((6, r * thumb + thumb // 2 - 12), f"{name}\n({who})", fill="black")
        for c in range(per_type):
            sheet.paste(
                render_cell(name, rng).resize((thumb, thumb)), (label_w + c * thumb, r * thumb)
            )
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
