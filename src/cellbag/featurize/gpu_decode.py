"""Batch loaders of the featurize pipeline: PIL in threads (CPU), or JPEG decoding on the GPU.

On a CPU the model is the bottleneck by far (10-45 cells/s against 300-900 JPEG decodes/s
per core), so :class:`CpuLoader` decodes with PIL in a few threads. Beside a GPU the
roles swap: ViT-S/16 runs ~7,000+ img/s in bf16 while PIL decodes ~300-440 img/s per
core, so 16 cores cap the pipeline near 5-6k cells/s before the model runs.
:class:`DeviceJpegLoader` moves the decode to the device:

- file reads and digests on a thread pool (``read``); the JPEG header is parsed there to
  decide, per file, whether the device can decode it;
- the batch's JPEG bytes are gathered into one pinned host buffer and decoded together by
  ``torchvision.io.decode_jpeg(list, device="cuda")`` (nvJPEG) on a side CUDA stream, in a
  decode thread, while the model runs the batch before (``decode``); images whose size
  differs from the encoder's are resized there with torch's antialiased kernels;
- normalisation runs on the device in :meth:`Encoder.forward_pixels`, the store write in
  the pipeline's writer thread: read, decode, forward and write overlap, bounded by the
  pipeline's look-ahead of 4 batches.

Per file, everything the device path cannot reproduce exactly falls back to the CPU path
(:func:`cellbag.featurize.images.decode_bytes`, then uploaded through pinned memory): PNG
and other formats, JPEGs with EXIF (orientation is applied by PIL), CMYK/YCCK or Adobe
JPEGs, 12-bit, lossless or arithmetic-coded JPEGs, and resizes with an interpolation
torch has no PIL-equivalent kernel for (lanczos, box, hamming). A batch the device
decoder rejects (a corrupt file passes the header check) is decoded file by file, and
files that still fail go to PIL, which gives the reason recorded in the store.

Equivalence (``tests/featurize/test_gpu_decode.py``, on CPU): torchvision's CPU decoder
(libjpeg-turbo, the same library as PIL) gives pixels identical to PIL's on the demo
JPEGs; the two-pass antialiased bicubic/bilinear resize is within 1 grey level of PIL's
(see :meth:`DeviceJpegLoader._resize` for the exception).
The smear recipe (``--crop``, ``--stain reinhard``) runs on the device after the decode
(:meth:`DeviceJpegLoader._recipe`, :func:`reinhard_tensor`): on 160 real lymphocytosis
JPEGs through torch's CPU kernels, 98.8% of the pixel values equal the PIL path's, the
rest differ by 1 grey level (2 in 17 of a million values).
nvJPEG's IDCT is not libjpeg-turbo's: its pixels may differ by a few grey levels (not
measured here: no GPU was available), a difference of the same order as bf16 autocast.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from cellbag.featurize.errors import DecodeError
from cellbag.featurize.images import (
    _LINEAR,
    _TO_RGB,
    _TO_XYZ,
    REINHARD_MEAN,
    REINHARD_STD,
    Decoded,
    ImageBytes,
    centre_box,
    decode_bytes,
    read_image_file,
)

# torchvision >= 0.29 warns that its image codecs move to TorchCodec; they are what runs here
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision")
DECODE_MODES = ("auto", "cpu", "gpu")
# torch's antialiased kernels use PIL's (bicubic a = -0.5): within 1 grey level of PIL
DEVICE_RESIZE = {"bicubic": "bicubic", "bilinear": "bilinear"}
READS_PER_TASK = 8  # files read by one thread-pool task on the GPU path
_SOF_OK = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)
_SOF_ANY = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # every start-of-frame marker


def resolve_decode(mode: str, device: str) -> str:
    """``auto`` -> ``gpu`` when ``device`` is CUDA, else ``cpu``; ``gpu`` needs CUDA."""
    mode = (mode or "auto").lower()
    if mode not in DECODE_MODES:
        raise DecodeError(f"unknown decode mode {mode!r}: choose one of {', '.join(DECODE_MODES)}")
    cuda = str(device).startswith("cuda")
    if mode == "auto":
        return "gpu" if cuda else "cpu"
    if mode == "gpu" and not cuda:
        raise DecodeError(f"--decode gpu needs a CUDA device, the encoder runs on {device!r}")
    return mode


def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """``(height, width, components)`` of a JPEG the device decodes like PIL, else None.

    None for other formats, and for JPEGs with EXIF, an Adobe marker (CMYK, YCCK, RGB
    transform), more than 8 bits, lossless or arithmetic coding, or components other than
    1 (grey) or 3 (YCbCr).
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        seg = data[i + 4 : i + 2 + length]
        if marker == 0xE1 and seg.startswith(b"Exif"):
            return None
        if marker == 0xEE and seg.startswith(b"Adobe"):
            return None
        if marker in _SOF_ANY:
            if marker not in _SOF_OK or len(seg) < 6 or seg[0] != 8:
                return None
            h, w, comps = (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], seg[5]
            return (h, w, comps) if comps in (1, 3) and h > 0 and w > 0 else None
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        i += 2 + length
    return None


class _Timer:
    """Seconds summed over threads, per stage (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {"read": 0.0, "decode": 0.0}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    def read_then(
        self,
        path: str,
        keep: Callable[[ImageBytes], bool],
        size: int,
        interp: str,
        crop: float = 1.0,
        stain: str = "none",
    ):
        """Read ``path``; return its bytes when ``keep(bytes)``, else decode them with PIL."""
        t0 = time.perf_counter()
        raw = read_image_file(path)
        t1 = time.perf_counter()
        self.add("read", t1 - t0)
        if isinstance(raw, Decoded) or keep(raw):
            return raw
        out = decode_bytes(raw, size, interp, crop, stain)
        self.add("decode", time.perf_counter() - t1)
        return out


class CpuLoader:
    """Read and decode each file with PIL in ``workers`` threads (the reference path)."""

    mode = "cpu"

    def __init__(
        self,
        size: int,
        interpolation: str,
        workers: int,
        crop: float = 1.0,
        stain: str = "none",
    ) -> None:
        self.size, self.interpolation, self.crop, self.stain = size, interpolation, crop, stain
        self.pool = ThreadPoolExecutor(workers, "cellbag-decode")
        self.timer = _Timer()

    def _one(self, path: str) -> Decoded:
        return self.timer.read_then(
            path, lambda raw: False, self.size, self.interpolation, self.crop, self.stain
        )

    def submit(self, paths: Sequence[str]) -> list[Future[Decoded]]:
        """Start reading and decoding ``paths`` (one batch)."""
        return [self.pool.submit(self._one, p) for p in paths]

    def collect(self, handle: list[Future[Decoded]]) -> list[Decoded]:
        """The batch's results, in order (waits for them)."""
        return [f.result() for f in handle]

    def stack(self, pixels: Sequence[Any]) -> Any:
        """One uint8 ``(n, size, size, 3)`` tensor of the readable images of a batch."""
        import torch

        return torch.from_numpy(np.stack(pixels))

    def cancel(self, handle: list[Future[Decoded]]) -> None:
        for f in handle:
            f.cancel()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def reinhard_tensor(img: Any) -> Any:
    """:func:`cellbag.featurize.images.reinhard` on a ``(3, H, W)`` uint8 tensor, on its
    device: the same conversions (scikit-image's, D65), constants and order, in float32
    (statistics in float64), so the pixels match the CPU path's to a grey level or so
    (float32 kernels round differently on each device)."""
    import torch

    dev = img.device
    c, h, w = img.shape
    x = torch.as_tensor(_LINEAR, device=dev)[img.reshape(3, -1).long()]  # linear RGB, (3, N)
    t = torch.as_tensor(_TO_XYZ.T.copy(), device=dev) @ x  # XYZ / white
    f = torch.where(t > 0.008856, t.clamp_min(0.0).pow(1.0 / 3.0), 7.787 * t + 16.0 / 116.0)
    lab = torch.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])  # (3, N)
    mu = lab.double().mean(1)
    sd = lab.double().std(1, correction=0)
    sd = torch.where(sd < 1e-6, torch.ones_like(sd), sd)
    ref_mu = torch.tensor(REINHARD_MEAN, dtype=torch.float64, device=dev)
    ref_sd = torch.tensor(REINHARD_STD, dtype=torch.float64, device=dev)
    scale, shift = (ref_sd / sd).float(), (ref_mu - mu * ref_sd / sd).float()
    lab = lab * scale[:, None] + shift[:, None]
    fy = (lab[0].clamp(0.0, 100.0) + 16.0) / 116.0
    f = torch.stack([lab[1] / 500.0 + fy, fy, (fy - lab[2] / 200.0).clamp_min(0.0)])
    t = torch.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787)
    lin = (torch.as_tensor(_TO_RGB.T.copy(), device=dev) @ t).clamp(0.0, 1.0)
    srgb = torch.where(lin > 0.0031308, 1.055 * lin.pow(1.0 / 2.4) - 0.055, 12.92 * lin)
    return (srgb.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).reshape(c, h, w)


class DeviceJpegLoader:
    """Read files in threads, decode a batch's JPEGs together on ``device`` (nvJPEG on CUDA).

    Works on ``device="cpu"`` too (torchvision's libjpeg-turbo decoder), which is how the
    tests check it against :class:`CpuLoader` without a GPU.
    """

    mode = "gpu"

    def __init__(
        self,
        size: int,
        interpolation: str,
        workers: int,
        device: str,
        crop: float = 1.0,
        stain: str = "none",
    ) -> None:
        import torch

        self.size, self.interpolation, self.device = size, interpolation, device
        self.crop = crop  # a centre crop, cut before the resize (as the CPU path does)
        self.stain = stain  # a stain normalisation, after the crop and before the resize
        self.cuda = str(device).startswith("cuda")
        self.resize_mode = DEVICE_RESIZE.get(interpolation)
        self.pool = ThreadPoolExecutor(workers, "cellbag-read")
        self.decoder = ThreadPoolExecutor(1, "cellbag-device-decode")
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.timer = _Timer()
        self.device_files = 0  # files decoded on the device
        self.fallback_files = 0  # files decoded by PIL (other formats, EXIF, ...)

    # ------------------------------------------------------------ read threads
    def _read(self, path: str) -> ImageBytes | Decoded:
        """Bytes of a JPEG the device will decode, else the CPU path's result."""
        return self.timer.read_then(
            path, self._on_device, self.size, self.interpolation, self.crop, self.stain
        )

    def _on_device(self, raw: ImageBytes) -> bool:
        info = jpeg_info(raw.data)
        if info is None:
            return False
        if self.crop < 1.0:  # the cut square is resized unless it happens to fit
            return bool(self.resize_mode)
        return info[:2] == (self.size, self.size) or bool(self.resize_mode)

    def _recipe(self, img: Any) -> Any:
        """The centre crop and the stain normalisation of a decoded ``(C, H, W)`` image, on
        the device, as :func:`cellbag.featurize.images.prepare` does them on the CPU; a
        grey image becomes three channels first."""
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        if self.crop < 1.0:
            left, top, right, bottom = centre_box(int(img.shape[2]), int(img.shape[1]), self.crop)
            img = img[:, top:bottom, left:right]
        if self.stain == "reinhard":
            img = reinhard_tensor(img.contiguous())
        return img

    # ------------------------------------------------------------ decode thread
    def _resize(self, img: Any) -> Any:
        """``(3, H, W)`` uint8 (after :meth:`_recipe`) -> ``(size, size, 3)`` uint8, resized
        in two passes like PIL.

        PIL resamples one axis, rounds and clips to uint8, then the other: bicubic overshoot
        is clipped in between. Doing the same (horizontal first, vertical first for images
        taller than wide and than the target, the order PIL 13 was seen to take) keeps the
        result within 1 grey level of PIL's; where PIL takes the other order the clipped
        overshoot differs at isolated pixels (up to ~20 levels on pure noise).
        """
        import torch.nn.functional as F

        h, w = int(img.shape[1]), int(img.shape[2])
        if (h, w) != (self.size, self.size):
            x = img[None].float()
            first = (h, self.size) if not (h > w and h > self.size) else (self.size, w)
            for shape in (first, (self.size, self.size)):
                if tuple(x.shape[2:]) != shape:
                    x = F.interpolate(
                        x, size=shape, mode=self.resize_mode, antialias=True, align_corners=False
                    )
                    x = x.round_().clamp_(0, 255)
            img = x[0].to(img.dtype)
        return img.permute(1, 2, 0)

    def _device_decode(self, raws: list[ImageBytes]) -> list[Any]:
        """Decoded ``(C, H, W)`` uint8 tensors on the device, or None for files it rejects."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        sizes = [len(r.data) for r in raws]
        buf = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=self.cuda)
        host = buf.numpy()
        views, at = [], 0
        for r, m in zip(raws, sizes, strict=True):
            host[at : at + m] = np.frombuffer(r.data, np.uint8)
            views.append(buf[at : at + m])
            at += m
        try:
            return list(decode_jpeg(views, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:  # one bad file fails the batch: find it file by file
            out = []
            for v in views:
                try:
                    out.append(decode_jpeg(v, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _decode(self, reads: list[Future[list[ImageBytes | Decoded]]]) -> list[Decoded]:
        import torch

        items = [it for f in reads for it in f.result()]
        t0 = time.perf_counter()
        results: list[Decoded | None] = [None] * len(items)
        jpegs = [i for i, it in enumerate(items) if isinstance(it, ImageBytes)]
        ctx = torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()
        with ctx, torch.inference_mode():
            if jpegs:
                raws = [items[i] for i in jpegs]
                for i, r, img in zip(jpegs, raws, self._device_decode(raws), strict=True):
                    if img is None:
                        results[i] = decode_bytes(
                            r, self.size, self.interpolation, self.crop, self.stain
                        )
                        continue
                    img = self._recipe(img)
                    results[i] = Decoded(self._resize(img), "", r.sha256, r.size, r.mtime_ns)
                    self.device_files += 1
            for i, it in enumerate(items):
                r = results[i] if results[i] is not None else it
                if r.pixels is not None and isinstance(r.pixels, np.ndarray):
                    pix = torch.from_numpy(r.pixels)  # a PIL fallback: upload it
                    if self.cuda:
                        pix = pix.pin_memory().to(self.device, non_blocking=True)
                    r = Decoded(pix, r.reason, r.sha256, r.size, r.mtime_ns)
                    self.fallback_files += 1
                results[i] = r
            if self.stream is not None:
                self.stream.synchronize()  # this thread waits, not the model
        self.timer.add("decode", time.perf_counter() - t0)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------ pipeline API
    def submit(self, paths: Sequence[str]) -> Future[list[Decoded]]:
        """Start reading ``paths`` (one batch) and queue its decode after the batches before."""
        step = READS_PER_TASK  # a task per few files: less executor work under the GIL
        reads = [
            self.pool.submit(lambda ps: [self._read(p) for p in ps], paths[i : i + step])
            for i in range(0, len(paths), step)
        ]
        return self.decoder.submit(self._decode, reads)

    def collect(self, handle: Future[list[Decoded]]) -> list[Decoded]:
        """The batch's results, in order; their pixels are ``(size, size, 3)`` device tensors."""
        import torch

        results = handle.result()
        if self.cuda:
            main = torch.cuda.current_stream(self.device)
            for r in results:  # made on the side stream, used and freed on the main one
                if r.pixels is not None:
                    r.pixels.record_stream(main)
        return results

    def stack(self, pixels: Sequence[Any]) -> Any:
        """One uint8 ``(n, size, size, 3)`` device tensor of the readable images."""
        import torch

        return torch.stack(list(pixels))

    def cancel(self, handle: Future[list[Decoded]]) -> None:
        handle.cancel()

    def close(self) -> None:
        self.decoder.shutdown(wait=True, cancel_futures=True)
        self.pool.shutdown(wait=True, cancel_futures=True)


def batch_loader(
    mode: str,
    device: str,
    size: int,
    interpolation: str,
    workers: int,
    crop: float = 1.0,
    stain: str = "none",
) -> CpuLoader | DeviceJpegLoader:
    """The loader for decode ``mode`` (``auto`` | ``cpu`` | ``gpu``) beside ``device``."""
    if resolve_decode(mode, device) == "gpu":
        return DeviceJpegLoader(size, interpolation, workers, device, crop, stain)
    return CpuLoader(size, interpolation, workers, crop, stain)


def gpu_utilization(device: str = "cuda") -> str:
    """The GPU's utilisation now (``torch.cuda.utilization``, else nvidia-smi), or ``n/a``."""
    try:
        import torch

        if torch.cuda.is_available() and str(device).startswith("cuda"):
            return f"{torch.cuda.utilization(torch.device(device))}%"
    except Exception:  # noqa: BLE001 - pynvml missing or no permission: try nvidia-smi
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") and str(device).startswith("cuda"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.split()
            if out:
                return f"{out[0]}%"
        except (OSError, subprocess.SubprocessError):
            pass
    return "n/a"
