"""Read row slices of a local 2-D Zarr v3 array straight from its chunk files.

Reading one bag through ``zarr`` costs a few thread hops (sync -> event loop -> I/O and
codec threads) that dominate a sub-millisecond read. For the layout the store writes
(regular row chunks spanning all columns, default ``c/<i>/0`` chunk keys, ``bytes`` then
optional ``zstd`` codecs, no sharding) the chunk files are read and decoded here, in the
caller's thread, following the Zarr v3 spec; a trailing ``crc32c`` codec is verified
(a mismatch raises ``ValueError``). Any other layout returns None from
:meth:`LocalRowReader.open` and the caller reads through ``zarr``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

_DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8", "uint8": "u1"}


def _fill(value: object, dtype: np.dtype) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return None


class LocalRowReader:
    """Row-slice reader of one array folder; build with :meth:`open`."""

    def __init__(
        self,
        folder: Path,
        shape: tuple[int, int],
        rows: int,
        dtype: np.dtype,
        fill: float,
        zstd: bool,
        crc32c: bool = False,
    ) -> None:
        self.folder = folder
        self.shape = shape
        self.rows = rows
        self.dtype = dtype
        self.fill = fill
        self.zstd = zstd
        self.crc32c = crc32c
        self._decoder = None
        if zstd:
            import numcodecs

            self._decoder = numcodecs.Zstd()

    @classmethod
    def open(cls, folder: str | Path) -> LocalRowReader | None:
        """A reader for the array in ``folder``, or None if its layout is not the plain one."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        try:
            shape = tuple(int(s) for s in meta["shape"])
            chunk = tuple(int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"])
            ok = (
                meta.get("zarr_format") == 3
                and meta.get("node_type") == "array"
                and len(shape) == 2
                and meta["chunk_grid"]["name"] == "regular"
                and chunk[1] == shape[1]
                and meta["chunk_key_encoding"]["name"] == "default"
                and meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/") == "/"
                and not meta.get("storage_transformers")
                and meta["data_type"] in _DTYPES
            )
            codecs = [c["name"] for c in meta["codecs"]]
            endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        crc = codecs[-1:] == ["crc32c"]
        if crc:
            codecs = codecs[:-1]
        if not ok or codecs not in (["bytes"], ["bytes", "zstd"]) or endian != "little":
            return None
        dtype = np.dtype(_DTYPES[meta["data_type"]])
        fill = _fill(meta.get("fill_value", 0), dtype)
        if fill is None:
            return None
        zstd = codecs == ["bytes", "zstd"]
        return cls(folder, (shape[0], shape[1]), chunk[0], dtype, fill, zstd, crc)

    def _chunk(self, i: int) -> np.ndarray | None:
        try:
            with open(self.folder / "c" / str(i) / "0", "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        if self.crc32c:
            import google_crc32c

            raw, stored = raw[:-4], raw[-4:]
            if len(stored) != 4 or google_crc32c.value(raw).to_bytes(4, "little") != stored:
                raise ValueError(f"{self.folder}: chunk {i} fails its crc32c checksum")
        buf = self._decoder.decode(raw) if self._decoder is not None else raw
        arr = np.frombuffer(buf, dtype=self.dtype)
        if arr.size != self.rows * self.shape[1]:
            raise ValueError(f"{self.folder}: chunk {i} has {arr.size} values")
        return arr.reshape(self.rows, self.shape[1])

    def read(self, lo: int, hi: int, dtype: type = np.float32) -> np.ndarray:
        """Rows ``[lo, hi)`` as ``dtype`` (missing chunks read as the fill value)."""
        hi = min(hi, self.shape[0])
        out = np.empty((max(hi - lo, 0), self.shape[1]), dtype=dtype)
        if hi <= lo:
            return out
        for i in range(lo // self.rows, math.ceil(hi / self.rows)):
            c0 = i * self.rows
            a, b = max(lo, c0), min(hi, c0 + self.rows)
            chunk = self._chunk(i)
            if chunk is None:
                out[a - lo : b - lo] = self.fill
            else:
                out[a - lo : b - lo] = chunk[a - c0 : b - c0]
        return out
