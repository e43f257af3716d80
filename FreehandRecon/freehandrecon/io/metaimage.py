"""MetaImage (.mha / .mhd + .raw/.zraw) reading and writing, including PLUS sequence headers.

The header is a list of ``Key = Value`` lines ending with ``ElementDataFile``; with
``ElementDataFile = LOCAL`` the binary data follows that line in the same file.
Arrays are returned in file order reversed, as numpy does it: ``DimSize = X Y Z``
gives ``array[z, y, x]`` (plus a trailing channel axis when
``ElementNumberOfChannels > 1``). ``direction[:, a]`` is the physical direction of
file axis ``a`` (x, y, z), as ITK reads ``TransformMatrix``.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import atomic_write, check_array_fits, check_output, existing_file

ELEMENT_TYPES: dict[str, str] = {
    "MET_CHAR": "i1", "MET_UCHAR": "u1", "MET_SHORT": "i2", "MET_USHORT": "u2",
    "MET_INT": "i4", "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4",
    "MET_LONG_LONG": "i8", "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8",
}
_TYPE_OF_DTYPE = {"i1": "MET_CHAR", "u1": "MET_UCHAR", "i2": "MET_SHORT", "u2": "MET_USHORT",
                  "i4": "MET_INT", "u4": "MET_UINT", "i8": "MET_LONG_LONG", "u8": "MET_ULONG_LONG",
                  "f4": "MET_FLOAT", "f8": "MET_DOUBLE"}
# Keys the writer derives from the array; callers cannot set them through ``fields``.
_STRUCTURAL = {"ObjectType", "NDims", "DimSize", "ElementType", "ElementNumberOfChannels", "BinaryData",
               "BinaryDataByteOrderMSB", "ElementByteOrderMSB", "CompressedData", "CompressedDataSize",
               "ElementDataFile", "HeaderSize", "ElementSpacing", "Offset", "TransformMatrix"}
_HEADER_CHUNK = 1 << 16
_FIX_REEXPORT = "Copy or export the file again (it may have been cut short by a full disk or an interrupted transfer)."


@dataclass
class MetaImage:
    """A MetaImage as read from disk.

    Attributes:
        array: pixel data ``[..., z, y, x]`` (``[N, H, W]`` for a PLUS sequence), with a
            trailing channel axis when ``channels > 1``; native byte order, writable.
        fields: every header line ``key -> value`` in file order (``Seq_Frame*`` ones too).
        spacing: ``ElementSpacing`` in file axis order (x, y, z, ...).
        offset: ``Offset`` (origin) in file axis order.
        direction: 3x3 direction cosines, column ``a`` = physical direction of file axis ``a``.
        element_type: e.g. ``"MET_UCHAR"``.
        channels: ``ElementNumberOfChannels``.
        path: the header file read.
    """

    array: np.ndarray
    fields: dict[str, str]
    spacing: tuple[float, ...]
    offset: tuple[float, ...]
    direction: np.ndarray
    element_type: str
    channels: int = 1
    path: Path | None = None

    @property
    def dim_size(self) -> tuple[int, ...]:
        """``DimSize`` in file axis order (x, y, z, ...)."""
        return tuple(int(v) for v in self.fields["DimSize"].split())

    @property
    def ndims(self) -> int:
        return len(self.dim_size)


# --- reading ---------------------------------------------------------------------------------
def _read_header(path: Path) -> tuple[dict[str, str], int]:
    """Return the header fields and the byte offset just after the ``ElementDataFile`` line."""
    marker = b"ElementDataFile"
    buf = bytearray()
    pos = end = -1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_HEADER_CHUNK)
            if not buf and b"=" not in chunk.split(b"\n", 1)[0]:
                raise InputError(f"'{path}' does not start with a MetaImage header line ('Key = Value').",
                                 "Give a .mha/.mhd MetaImage file (e.g. a PLUS .igs.mha sequence).")
            # search only the new bytes (plus an overlap), so long PLUS headers stay linear
            search_from = max(len(buf) - len(marker) - 1, 0) if pos < 0 else pos
            buf += chunk
            # the data-file line is the last header line; it must start a line
            while pos < 0:
                hit = buf.find(marker, search_from)
                if hit < 0:
                    break
                if hit == 0 or buf[hit - 1] in b"\r\n":
                    pos = hit
                search_from = hit + 1
            if pos >= 0:
                end = buf.find(b"\n", pos)
                if end >= 0 or not chunk:
                    break
            if not chunk:
                raise InputError(f"'{path}' has no 'ElementDataFile' header line ({len(buf)} bytes read): it is "
                                 "not a MetaImage file or its header is cut short.",
                                 "Give a .mha/.mhd MetaImage file (e.g. a PLUS .igs.mha sequence). " + _FIX_REEXPORT)
    data_start = len(buf) if end < 0 else end + 1
    header = bytes(buf[:data_start])
    codes = np.frombuffer(header, dtype=np.uint8)
    control = np.flatnonzero((codes < 32) & (codes != 9) & (codes != 10) & (codes != 13))
    if control.size:  # binary bytes inside the header: not a text header
        lineno = header.count(b"\n", 0, int(control[0])) + 1
        raise InputError(f"'{path}' header line {lineno} contains binary data, not 'Key = Value'.",
                         "The file is not a valid MetaImage; " + _FIX_REEXPORT)
    fields: dict[str, str] = {}
    for lineno, raw in enumerate(header.decode("latin-1").splitlines(), start=1):
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            if not raw.strip():
                continue
            raise InputError(f"'{path}' header line {lineno} is not 'Key = Value': {raw.strip()[:60]!r}.",
                             "The file is not a valid MetaImage; " + _FIX_REEXPORT)
        fields[key.strip()] = value.strip()
    return fields, data_start


def _numbers(fields: dict[str, str], key: str, path: Path, kind: type = float) -> list:
    try:
        return [kind(v) for v in fields[key].split()]
    except ValueError:
        raise InputError(f"'{path}': header field {key} = '{fields[key]}' is not a list of numbers.",
                         "Fix that header line in a text editor or export the file again.") from None


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes")


def _dtype(fields: dict[str, str], path: Path) -> np.dtype:
    etype = fields.get("ElementType")
    if etype is None:
        raise InputError(f"'{path}' has no ElementType header field.",
                         "Add e.g. 'ElementType = MET_UCHAR' before ElementDataFile, or export the file again.")
    if etype not in ELEMENT_TYPES:
        raise InputError(f"'{path}' has ElementType {etype}, which FreehandRecon does not read.",
                         f"Convert the image to one of {', '.join(ELEMENT_TYPES)}.")
    msb = _is_true(fields.get("BinaryDataByteOrderMSB", fields.get("ElementByteOrderMSB")))
    return np.dtype(("<" if not msb else ">") + ELEMENT_TYPES[etype])


def _geometry(fields: dict[str, str], ndims: int, path: Path) -> tuple[tuple, tuple, np.ndarray]:
    spacing = tuple(_numbers(fields, "ElementSpacing", path)) if "ElementSpacing" in fields else (1.0,) * ndims
    offset_key = next((k for k in ("Offset", "Origin", "Position") if k in fields), None)
    offset = tuple(_numbers(fields, offset_key, path)) if offset_key else (0.0,) * ndims
    direction = np.eye(3)
    key = next((k for k in ("TransformMatrix", "Rotation", "Orientation") if k in fields), None)
    if key:
        tm = np.asarray(_numbers(fields, key, path))
        n = int(round(np.sqrt(tm.size)))
        if n * n != tm.size:
            raise InputError(f"'{path}': {key} has {tm.size} numbers, not a square matrix.",
                             f"Give {ndims * ndims} numbers or remove the line.")
        m = tm.reshape(n, n).T  # row a of the file = direction of axis a
        k = min(n, 3)
        direction[:k, :k] = m[:k, :k]
    return spacing, offset, direction


def _data_source(fields: dict[str, str], header: Path, data_start: int) -> tuple[Path, int]:
    """Return the file holding the pixel data and where it starts (-1: at the end)."""
    name = fields["ElementDataFile"]
    if name.upper() == "LOCAL":
        return header, data_start
    if name.upper().startswith("LIST") or "%" in name or len(name.split()) > 1:
        raise InputError(f"'{header}' stores its slices in several data files (ElementDataFile = {name}).",
                         "Convert it to a single .mha file (e.g. save it again from 3D Slicer).")
    data = (header.parent / name)
    if not data.is_file():
        raise InputError(f"The data file '{data}' named by '{header}' (ElementDataFile = {name}) does not exist.",
                         "Keep the .raw/.zraw file next to its .mhd header with the name the header gives.")
    skip = int(_numbers(fields, "HeaderSize", header, int)[0]) if "HeaderSize" in fields else 0
    return data, skip


def read_metaimage_fields(path: str | os.PathLike) -> dict[str, str]:
    """Only the header fields of a .mha/.mhd file (no pixel data is read)."""
    return _read_header(existing_file(path, "MetaImage file"))[0]


def read_metaimage(path: str | os.PathLike) -> MetaImage:
    """Read a .mha or .mhd (+ .raw/.zraw) MetaImage; see :class:`MetaImage`.

    Raises :class:`InputError` naming the file, the bytes expected and found, and a fix
    when the file is empty, truncated, corrupt or uses a feature not supported.
    """
    p = existing_file(path, "MetaImage file")
    fields, data_start = _read_header(p)
    if "DimSize" not in fields:
        raise InputError(f"'{p}' has no DimSize header field, so the image size is unknown.",
                         "Add e.g. 'DimSize = 640 480 100' (columns rows frames) before ElementDataFile, "
                         "or export the file again.")
    dims = _numbers(fields, "DimSize", p, int)
    ndims = int(_numbers(fields, "NDims", p, int)[0]) if "NDims" in fields else len(dims)
    if len(dims) != ndims or ndims < 1 or min(dims) < 1:
        raise InputError(f"'{p}': DimSize = {fields['DimSize']} does not give {ndims} positive sizes (NDims).",
                         "Make DimSize list one positive size per dimension.")
    channels = int(_numbers(fields, "ElementNumberOfChannels", p, int)[0]) if "ElementNumberOfChannels" in fields else 1
    if channels < 1:
        raise InputError(f"'{p}': ElementNumberOfChannels = {channels}.", "Use 1 (grey) to 4 (RGBA).")
    dtype = _dtype(fields, p)
    spacing, offset, direction = _geometry(fields, ndims, p)
    shape = tuple(reversed(dims)) + ((channels,) if channels > 1 else ())
    check_array_fits(shape, dtype.itemsize, "the image (DimSize)", p)  # before reading or decompressing
    count = int(np.prod(shape, dtype=np.int64))
    expected = count * dtype.itemsize

    source, start = _data_source(fields, p, data_start)
    size = source.stat().st_size
    if start < 0:  # HeaderSize = -1: the data are the last bytes of the file
        start = max(size - expected, 0) if not _is_true(fields.get("CompressedData")) else 0
    available = size - start

    if _is_true(fields.get("CompressedData")):
        declared = int(_numbers(fields, "CompressedDataSize", p, int)[0]) if "CompressedDataSize" in fields else None
        if declared is not None and available < declared:
            raise InputError(f"'{source}' is truncated: the header declares {declared} compressed bytes but only "
                             f"{available} follow the header.", _FIX_REEXPORT)
        with open(source, "rb") as f:
            f.seek(start)
            packed = f.read(declared if declared is not None else available)
        try:
            d = zlib.decompressobj(47)  # zlib or gzip stream, detected from its header
            raw = d.decompress(packed, expected + 1)
            complete = d.eof
        except zlib.error as exc:
            raise InputError(f"'{source}': the compressed pixel data are corrupt ({exc}); {len(packed)} compressed "
                             f"bytes read, {expected} bytes of pixels expected.", _FIX_REEXPORT) from None
        if not complete or len(raw) != expected:
            raise InputError(f"'{source}': the compressed pixel data are truncated or corrupt: they give "
                             f"{len(raw)} bytes but DimSize x ElementType needs {expected} bytes.", _FIX_REEXPORT)
        array = np.frombuffer(raw, dtype=dtype).copy().reshape(shape)
    else:
        if available < expected:
            raise InputError(f"'{source}' is truncated: {expected} bytes of pixel data expected "
                             f"(DimSize {fields['DimSize']}, {fields['ElementType']}"
                             f"{f', {channels} channels' if channels > 1 else ''}) but only {available} found.",
                             _FIX_REEXPORT)
        with open(source, "rb") as f:
            f.seek(start)
            array = np.fromfile(f, dtype=dtype, count=count).reshape(shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return MetaImage(array=array, fields=fields, spacing=spacing, offset=offset, direction=direction,
                     element_type=fields["ElementType"], channels=channels, path=p)


# --- writing ---------------------------------------------------------------------------------
def _fmt(values) -> str:
    return " ".join(f"{float(v):.17g}" if isinstance(v, (float, np.floating)) else str(v) for v in values)


def write_metaimage(path: str | os.PathLike, array: np.ndarray, *, spacing=None, offset=None,
                    direction: np.ndarray | None = None, channels: int = 1,
                    fields: dict[str, str] | None = None, compress: bool = False,
                    compression_level: int = 1, force: bool = True) -> Path:
    """Write ``array`` (``[..., z, y, x]`` plus a channel axis when ``channels > 1``) as MetaImage.

    ``.mha`` keeps the data in the same file; ``.mhd`` writes a ``.raw`` (or ``.zraw``
    when compressed) file beside it. ``spacing``/``offset`` are in file axis order
    (x, y, z). ``fields`` are extra header lines written, in order, just before
    ``ElementDataFile`` (e.g. PLUS ``Seq_Frame*`` fields). Files are written to a
    temporary name and moved into place, so a failure never leaves a partial file.
    """
    out = check_output(path, force)
    suffix = out.suffix.lower()
    if suffix not in (".mha", ".mhd"):
        raise InputError(f"Cannot write MetaImage to '{out}': the name must end in .mha or .mhd.",
                         "Use e.g. 'sweep.igs.mha' or 'volume.mhd'.")
    arr = np.asarray(array)
    key = arr.dtype.newbyteorder("<").str[1:] if arr.dtype.kind in "iuf" else ""
    if key not in _TYPE_OF_DTYPE:
        raise InputError(f"Cannot write pixel type {arr.dtype} to MetaImage.",
                         "Convert the array to uint8, int16, uint16, int32, float32 or float64 first.")
    spatial = arr.shape[:-1] if channels > 1 else arr.shape
    if channels > 1 and arr.shape[-1] != channels:
        raise InputError(f"The array's last axis has {arr.shape[-1]} values but channels={channels}.",
                         "Put the channel axis last.")
    ndims = len(spatial)
    if ndims < 1:
        raise InputError("Cannot write a 0-dimensional array as MetaImage.", "Give at least a 1D array.")
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    dims = list(reversed(spatial))
    spacing = list(spacing) if spacing is not None else [1.0] * ndims
    offset = list(offset) if offset is not None else [0.0] * ndims
    if len(spacing) != ndims or len(offset) != ndims:
        raise InputError(f"spacing/offset need {ndims} values (one per axis, x first).", "Pass one value per axis.")
    tm = np.eye(ndims)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    k = min(ndims, 3)
    tm[:k, :k] = d[:k, :k]
    extra = dict(fields or {})
    clash = _STRUCTURAL.intersection(extra)
    if clash:
        raise InputError(f"Header fields {sorted(clash)} are derived from the array and cannot be given.",
                         "Use the spacing/offset/direction/channels/compress arguments instead.")

    payload: bytes | memoryview = memoryview(data).cast("B")
    if compress:
        payload = zlib.compress(payload, compression_level)
    header = {"ObjectType": "Image", "NDims": str(ndims), "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
              "CompressedData": "True" if compress else "False"}
    if compress:
        header["CompressedDataSize"] = str(len(payload))
    header.update({"TransformMatrix": _fmt(tm.T.ravel()), "Offset": _fmt(offset), "ElementSpacing": _fmt(spacing),
                   "DimSize": _fmt(dims)})
    if channels > 1:
        header["ElementNumberOfChannels"] = str(channels)
    header["ElementType"] = _TYPE_OF_DTYPE[key]
    header.update(extra)
    if suffix == ".mha":
        header["ElementDataFile"] = "LOCAL"
        files = [(out, [_header_bytes(header), payload])]
    else:
        data_file = out.with_suffix(".zraw" if compress else ".raw")
        check_output(data_file, force)
        header["ElementDataFile"] = data_file.name
        files = [(data_file, [payload]), (out, [_header_bytes(header)])]
    atomic_write(files)
    return out


def _header_bytes(header: dict[str, str]) -> bytes:
    for k, v in header.items():
        if "\n" in k or "\n" in v or "\r" in v or "=" in k:
            raise InputError(f"Header field {k!r} contains a line break or '='.", "Remove it from the field.")
    return "".join(f"{k} = {v}\n" for k, v in header.items()).encode("latin-1")
