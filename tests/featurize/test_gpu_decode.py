"""The batched (GPU) decode path, checked on CPU against the PIL path it must reproduce.

``DeviceJpegLoader`` runs on ``device="cpu"`` here (torchvision's libjpeg-turbo decoder):
the batching, per-file fallback, resize and pipeline wiring are the GPU path's; only
nvJPEG itself is not exercised without a GPU.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cellbag.featurize import gpu_decode
from cellbag.featurize.gpu_decode import (
    CpuLoader,
    DecodeError,
    DeviceJpegLoader,
    batch_loader,
    jpeg_info,
    resolve_decode,
)

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "JPEG"), **kw)
    return buf.getvalue()


def _load(loader, paths, batch: int = 8):
    handles = [loader.submit(paths[i : i + batch]) for i in range(0, len(paths), batch)]
    out = [r for h in handles for r in loader.collect(h)]
    loader.close()
    return out


def test_resolve_decode_modes():
    assert resolve_decode("auto", "cpu") == "cpu"
    assert resolve_decode("auto", "cuda:0") == "gpu"
    assert resolve_decode("CPU", "cuda") == "cpu"
    with pytest.raises(DecodeError, match="--decode gpu needs a CUDA device.*'cpu'"):
        resolve_decode("gpu", "cpu")
    with pytest.raises(DecodeError, match="unknown decode mode 'nvjpeg'"):
        resolve_decode("nvjpeg", "cuda")
    assert isinstance(batch_loader("auto", "cpu", 32, "bicubic", 1), CpuLoader)


def test_jpeg_info_sends_only_plain_jpegs_to_the_device():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    assert jpeg_info(_jpeg(rgb)) == (64, 80, 3)
    assert jpeg_info(_jpeg(rgb, progressive=True)) == (64, 80, 3)
    assert jpeg_info(_jpeg(rgb.convert("L"))) == (64, 80, 1)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: PIL applies the orientation, the CPU path must do it
    assert jpeg_info(_jpeg(rgb, exif=exif.tobytes())) is None
    assert jpeg_info(_jpeg(rgb.convert("CMYK"))) is None  # Adobe marker
    assert jpeg_info(_jpeg(rgb, format="PNG")) is None
    assert jpeg_info(_jpeg(rgb)[:30]) is None  # header cut before the frame
    assert jpeg_info(b"") is None


@pytest.mark.parametrize("size", [224, 48])
def test_device_loader_equals_the_pil_path(feat_cohort, size):
    """Same statuses, reasons and digests; pixels identical where no resize is needed (the
    224 px demo JPEGs at 224), within 1 grey level where resized (two-pass like PIL)."""
    paths = list(feat_cohort.cells["path"])
    ref = _load(CpuLoader(size, "bicubic", 2), paths)
    dev = DeviceJpegLoader(size, "bicubic", 2, "cpu")
    got = _load(dev, paths, batch=20)  # several read tasks a batch
    assert dev.device_files > 20 and dev.fallback_files >= 3  # the PNGs went through PIL
    native = resized = 0
    for path, a, b in zip(paths, ref, got, strict=True):
        assert (a.reason, a.sha256, a.size, a.mtime_ns) == (b.reason, b.sha256, b.size, b.mtime_ns)
        assert (a.pixels is None) == (b.pixels is None)
        if a.pixels is not None:
            assert tuple(b.pixels.shape) == (size, size, 3)
            diff = int(np.abs(a.pixels.astype(int) - b.pixels.numpy().astype(int)).max())
            if size == 224 and "zz_" not in path:
                native = max(native, diff)
            else:
                resized = max(resized, diff)
    assert native == 0 and resized <= 1, (native, resized)


def test_a_corrupt_jpeg_in_a_batch_falls_back_file_by_file(tmp_path):
    rng = np.random.default_rng(1)
    good = _jpeg(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))
    paths = []
    for i in range(5):
        p = tmp_path / f"c{i}.jpg"
        p.write_bytes(good[: len(good) // 2] if i == 2 else good)  # header fine, data cut
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.jpg"))
    assert jpeg_info((tmp_path / "c2.jpg").read_bytes()) is not None
    got = _load(DeviceJpegLoader(32, "bicubic", 2, "cpu"), paths, batch=6)
    ref = _load(CpuLoader(32, "bicubic", 1), paths, batch=6)
    assert [r.pixels is None for r in got] == [False, False, True, False, False, True]
    assert got[2].reason == ref[2].reason and "truncated" in got[2].reason.lower()
    assert got[5].reason == ref[5].reason and got[5].reason
    np.testing.assert_array_equal(got[0].pixels.numpy(), ref[0].pixels)


def test_interpolation_without_a_torch_kernel_resizes_with_pil(tmp_path):
    rng = np.random.default_rng(2)
    p = tmp_path / "a.jpg"
    p.write_bytes(_jpeg(Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))))
    dev = DeviceJpegLoader(24, "lanczos", 1, "cpu")
    (got,) = _load(dev, [str(p)])
    (ref,) = _load(CpuLoader(24, "lanczos", 1), [str(p)])
    assert dev.fallback_files == 1 and dev.device_files == 0
    np.testing.assert_array_equal(got.pixels.numpy(), ref.pixels)


def test_pipeline_with_batched_decode_matches_cpu_decode(
    tmp_path, feat_cohort, feat_kw, tiny_spec, monkeypatch
):
    """The featurize hook: ``decode='gpu'`` (forced onto the CPU device here) gives the CPU
    path's statuses and, at 48 px (every image resized), embeddings within 2e-3 of the
    largest value (measured 3.9e-3 for values up to 5.0: one float16 step of the store)."""
    from cellbag.featurize import create_encoder, run_featurize

    enc = create_encoder(tiny_spec["name"], weights="none", image_size=48, device="cpu")
    ref = run_featurize(feat_cohort, tmp_path / "cpu.zarr", enc, decode="cpu", **feat_kw)
    assert ref.decode == "cpu" and ref.decode_seconds > 0 and ref.read_seconds > 0
    monkeypatch.setattr(gpu_decode, "resolve_decode", lambda mode, device: "gpu")
    got = run_featurize(feat_cohort, tmp_path / "gpu.zarr", enc, decode="gpu", **feat_kw)
    assert got.decode == "gpu" and got.complete
    a, b = ref.store.cells(), got.store.cells()
    assert list(a["status"]) == list(b["status"]) and list(a["sha256"]) == list(b["sha256"])
    ea = np.asarray(ref.store.embeddings(enc.id)[:], np.float32)
    eb = np.asarray(got.store.embeddings(enc.id)[:], np.float32)
    ok = np.isfinite(ea).all(1)
    assert ok.sum() > 20 and (np.isfinite(eb).all(1) == ok).all()
    diff = np.abs(ea[ok] - eb[ok]).max()
    assert diff <= 2e-3 * np.abs(ea[ok]).max(), diff  # measured: 0.0039 of 5.0 (1 fp16 step)


def test_cli_decode_gpu_without_cuda_is_one_clear_error(tmp_path, feat_cohort):
    from typer.testing import CliRunner

    from cellbag.cli import app

    store = tmp_path / "s.zarr"
    args = ["featurize", str(feat_cohort.root), str(store), "--weights", "none"]
    args += ["--image-size", "32", "--device", "cpu", "--decode", "gpu", "-q"]
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, DecodeError), res.output
    assert "--decode gpu needs a CUDA device" in str(res.exception)
    assert not store.exists()  # refused before anything was written
