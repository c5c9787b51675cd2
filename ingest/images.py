"""Submitted image files: read TIFF / OME-TIFF / PNG / JPEG, check them against the manifest.

:func:`read_image_file` reads one file into an :class:`ImageFile` (the pixels as numpy, in
``"yx"``, ``"cyx"`` or ``"zyx"`` order, plus the channel names and pixel size its metadata
gives). :func:`check_declared` compares it with what the manifest declares, and
:func:`check_labels` a segmentation mask with the image and the cells; both return
:class:`~aivc.errors.Finding` lists (one finding per mistake) and never raise.

How axes are read
-----------------
TIFF axes come from tifffile's series (OME-XML, ImageJ or shaped metadata; length-1 axes
dropped): ``C`` and ``S`` (RGB samples) are channels, stored first; ``Z`` is depth. A 3-D
stack whose file does not say what its planes are (tifffile's ``Q``/``I``, e.g. a plain
multi-page TIFF) is read as a z-stack, ``"zyx"``; save channels as an OME-TIFF (or an
ImageJ hyperstack) to mark them as channels. Time series and 4-D images are refused. Of a
pyramidal OME-TIFF, the full-resolution level is read. PNG and JPEG (Pillow): greyscale is
``"yx"``; RGB, RGBA and grey+alpha are ``"cyx"``; palette images are expanded to RGB(A).

Pixel size: OME ``PhysicalSizeX`` (converted to micrometres), else an ImageJ TIFF's
``XResolution`` when its unit is microns; PNG/JPEG never give one (their dpi is not a
microscope's). Channel names: OME ``Channel/@Name`` when there is one name per channel.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from aivc.errors import Finding, UsageError
from aivc.ingest.readers import UnreadableDataError

__all__ = ["ImageFile", "check_declared", "check_labels", "read_image_file"]

ImageAxes = Literal["yx", "cyx", "zyx"]
#: Pillow refuses images over ~179 M pixels as "decompression bombs"; slide scans are larger
MAX_PIXELS = 1 << 32
_UM = {"µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4, "pm": 1e-6}
_SHOW = 5  # ids or names shown in a message


@dataclass(frozen=True, eq=False)
class ImageFile:
    """One submitted image read into memory (``array`` in ``axes`` order)."""

    array: np.ndarray
    axes: ImageAxes
    dtype: str
    shape: tuple[int, ...]
    channel_names: tuple[str, ...] | None
    pixel_size_um: float | None
    path: str

    @property
    def n_channels(self) -> int:
        """Channels: the first axis of a ``"cyx"`` image, else 1."""
        return self.shape[0] if self.axes == "cyx" else 1

    @property
    def shape_yx(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]


def read_image_file(path: Path | str) -> ImageFile:
    """Read a TIFF, OME-TIFF, PNG or JPEG file (recognised by its first bytes, not its name).

    >>> img = read_image_file("tests/ingest/data/images/nuclei_2ch.ome.tif")  # doctest: +SKIP
    >>> img.axes, img.channel_names, img.pixel_size_um                         # doctest: +SKIP
    ('cyx', ('DAPI', 'DAPI_smooth'), 0.65)
    """
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"image file not found: {p}; check the path in the manifest", where=str(p))
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _read_tiff(p)
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return _read_pillow(p)
    raise UnreadableDataError("not a TIFF, PNG or JPEG image (unknown file signature); convert it to OME-TIFF", where=str(p))


def _read_tiff(p: Path) -> ImageFile:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            axes = series.axes.upper()
            array = series.asarray()  # level 0 of a pyramid
            ome = tf.ome_metadata if tf.is_ome else None
            imagej = tf.imagej_metadata if tf.is_imagej else None
            xres = tf.pages[0].tags.get("XResolution") if len(tf.pages) else None
            xres_value = xres.value if xres is not None else None
    except Exception as exc:  # tifffile raises many types for broken files
        raise UnreadableDataError(f"not a readable TIFF ({type(exc).__name__}: {str(exc)[:120]}); re-save it as OME-TIFF", where=str(p)) from None
    array, out_axes = _tiff_axes(array, axes, p)
    names, px = _ome_metadata(ome, p) if ome else (None, None)
    if px is None and imagej is not None:
        px = _imagej_pixel_size(imagej, xres_value)
    n_ch = array.shape[0] if out_axes == "cyx" else 1
    if names is not None and len(names) != n_ch:
        names = None  # e.g. one OME channel holding three RGB samples
    return _image(array, out_axes, names, px, p)


def _tiff_axes(array: np.ndarray, axes: str, p: Path) -> tuple[np.ndarray, ImageAxes]:
    """``array`` (in tifffile's ``axes`` order) as yx / cyx / zyx."""
    keep = [i for i, a in enumerate(axes) if array.shape[i] != 1 or a in "YX"]
    array = array.reshape([array.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes or axes.index("Y") > axes.index("X"):
        raise UnreadableDataError(f"TIFF axes {axes!r} have no y and x plane; save a 2-D image or a channel stack", where=str(p))
    extra = [a for a in axes if a not in "YX"]
    if not extra:
        return array.reshape(array.shape[axes.index("Y")], array.shape[axes.index("X")]), "yx"
    if len(extra) > 1:
        raise UnreadableDataError(f"a {array.ndim}-D image (axes {axes}) is not supported; save one 2-D image or one channel stack (CYX) per file", where=str(p))
    if extra[0] == "T":
        raise UnreadableDataError(f"a time series (axes {axes}) is not supported; save one time point per file", where=str(p))
    order = [axes.index(extra[0]), axes.index("Y"), axes.index("X")]
    array = np.ascontiguousarray(np.transpose(array, order)) if order != [0, 1, 2] else array
    return array, ("cyx" if extra[0] in "CS" else "zyx")


def _ome_metadata(xml: str, p: Path) -> tuple[tuple[str, ...] | None, float | None]:
    """Channel names and PhysicalSizeX (micrometres) of the first OME Image."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    ns = root.tag[1 : root.tag.index("}")] if root.tag.startswith("{") else ""
    q = (lambda t: f"{{{ns}}}{t}") if ns else (lambda t: t)
    pixels = root.find(f"{q('Image')}/{q('Pixels')}")
    if pixels is None:
        return None, None
    names = [c.get("Name") for c in pixels.findall(q("Channel"))]
    channels = tuple(str(n) for n in names) if names and all(n for n in names) else None
    px = None
    if pixels.get("PhysicalSizeX"):
        factor = _UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
        try:
            value = float(pixels.get("PhysicalSizeX", ""))
        except ValueError:
            value = float("nan")
        if factor is not None and np.isfinite(value) and value > 0:
            px = value * factor
    return channels, px


def _imagej_pixel_size(meta: Mapping[str, Any], xres: Any) -> float | None:
    unit = str(meta.get("unit", "")).replace("\\u00B5", "µ")
    if unit not in _UM or not isinstance(xres, tuple) or len(xres) != 2 or not xres[0]:
        return None
    per_unit = xres[0] / xres[1]  # pixels per unit
    return None if per_unit in (0, 1) else _UM[unit] / per_unit


def _read_pillow(p: Path) -> ImageFile:
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
    try:
        with Image.open(p) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "PA":
                im = im.convert("RGBA")
            array = np.asarray(im)
    except Exception as exc:
        raise UnreadableDataError(f"not a readable PNG/JPEG ({type(exc).__name__}: {str(exc)[:120]}); re-save it as OME-TIFF", where=str(p)) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if array.ndim == 3:
        return _image(np.ascontiguousarray(np.moveaxis(array, -1, 0)), "cyx", None, None, p)
    return _image(array, "yx", None, None, p)


def _image(array: np.ndarray, axes: ImageAxes, names: tuple[str, ...] | None, px: float | None, p: Path) -> ImageFile:
    return ImageFile(array=array, axes=axes, dtype=str(array.dtype), shape=tuple(int(s) for s in array.shape), channel_names=names, pixel_size_um=px, path=str(p))


# --------------------------------------------------------------------------- checks


def check_declared(img: ImageFile, *, channels: list[str] | None, pixel_size_um: float | None, dtype: str | None, where: str) -> list[Finding]:
    """What in ``img`` contradicts the manifest: its channels, its pixel type, its pixel size.

    Codes: ``SPATIAL_IMAGE_CHANNELS`` (another number of channels, or OME names that differ),
    ``SPATIAL_IMAGE_DTYPE`` (not an integer/float pixel type, or not the declared one),
    ``SPATIAL_IMAGE_PIXEL_SIZE`` (the file's pixel size differs from the declared one by more
    than 1 %). ``None`` means "not declared" and checks nothing.
    """
    out: list[Finding] = []
    if channels is not None:
        out += _check_channels(img, list(channels), where)
    kind = np.dtype(img.dtype).kind
    if kind not in "uif":
        out.append(Finding("SPATIAL_IMAGE_DTYPE", where, f"pixel type {img.dtype} is not an integer or float image; save the image with uint8, uint16 or float32 pixels"))
    elif dtype is not None:
        try:
            want = np.dtype(dtype)
        except TypeError:
            out.append(Finding("SPATIAL_IMAGE_DTYPE", where, f"the declared dtype {dtype!r} is not a pixel type; declare e.g. 'uint8', 'uint16' or 'float32' (the file has {img.dtype})"))
        else:
            if want != np.dtype(img.dtype):
                out.append(Finding("SPATIAL_IMAGE_DTYPE", where, f"the image has {img.dtype} pixels but the manifest declares {want}; declare dtype {img.dtype} or re-save the image as {want}"))
    if pixel_size_um is not None and img.pixel_size_um is not None:
        rel = abs(img.pixel_size_um - pixel_size_um) / pixel_size_um if pixel_size_um > 0 else float("inf")
        if rel > 0.01:
            out.append(Finding("SPATIAL_IMAGE_PIXEL_SIZE", where,
                               f"the file's metadata gives {img.pixel_size_um:.6g} µm per pixel but the manifest declares {pixel_size_um:.6g} µm ({rel:.0%} apart); "
                               "correct pixel_size_um in the manifest or the file's PhysicalSizeX"))
    return out


def _check_channels(img: ImageFile, declared: list[str], where: str) -> list[Finding]:
    n = img.n_channels
    if len(declared) != n:
        has = f"{n} channel{'s' if n != 1 else ''}" + (f" ({', '.join(img.channel_names)})" if img.channel_names else "")
        axes = f"{img.axes} {' x '.join(map(str, img.shape))}"
        return [Finding("SPATIAL_IMAGE_CHANNELS", where, f"the manifest declares {len(declared)} channels ({', '.join(declared[:_SHOW])}) but the image has {has}, axes {axes}; declare one name per channel, in the file's order")]
    if img.channel_names is None:
        return []
    norm = [s.strip().casefold() for s in declared]
    have = [s.strip().casefold() for s in img.channel_names]
    if norm == have:
        return []
    if sorted(norm) == sorted(have):
        return [Finding("SPATIAL_IMAGE_CHANNELS", where, f"the channels are in another order in the file ({', '.join(img.channel_names)}) than in the manifest ({', '.join(declared)}); list them in the file's order")]
    i = next(k for k, (a, b) in enumerate(zip(norm, have, strict=False)) if a != b)
    return [Finding("SPATIAL_IMAGE_CHANNELS", where, f"channel {i + 1} is named {img.channel_names[i]!r} in the file's OME metadata but {declared[i]!r} in the manifest; use the file's channel names (or fix the file)")]


def check_labels(labels: np.ndarray, image_shape_yx: tuple[int, int], cell_label_ids: Mapping[str, int], where: str) -> list[Finding]:
    """What is wrong with a segmentation mask for this image and these cells.

    ``cell_label_ids`` maps each cell id to its label id in the mask (0 is background).
    Codes: ``SPATIAL_LABELS_SHAPE`` (its y/x shape is not the image's), ``SPATIAL_LABELS_DTYPE``
    (not integer, or negative ids), ``SPATIAL_LABEL_UNKNOWN`` (a warning: ids > 0 in the mask
    that no cell claims, e.g. cells removed by QC before submission), ``SPATIAL_CELL_UNLABELLED``
    (cells whose label id does not occur in the mask). The ids are checked only on a mask
    of the right shape and an integer (or integral float) type.
    """
    labels = np.asarray(labels)
    out: list[Finding] = []
    yx = tuple(int(s) for s in labels.shape[-2:]) if labels.ndim >= 2 else tuple(labels.shape)
    wrong_shape = labels.ndim not in (2, 3) or yx != tuple(image_shape_yx)
    if wrong_shape:
        out.append(Finding("SPATIAL_LABELS_SHAPE", where, f"the label image is {' x '.join(map(str, labels.shape))} pixels but the image is {image_shape_yx[0]} x {image_shape_yx[1]}; "
                                                          "give a mask of the image's own size (one label id per pixel)"))
    kind = labels.dtype.kind
    ids: np.ndarray | None = None
    if kind == "b":
        out.append(Finding("SPATIAL_LABELS_DTYPE", where, "the label image is a binary (bool) mask; give each cell its own integer id (0 = background), e.g. with skimage.measure.label"))
    elif kind not in "iu":
        integral = kind == "f" and bool(np.all(np.isfinite(labels))) and bool(np.all(np.mod(labels, 1) == 0))
        out.append(Finding("SPATIAL_LABELS_DTYPE", where, f"the label image has {labels.dtype} pixels; save it with an integer type (uint16 or uint32), one id per cell, 0 = background"))
        ids = _present_ids(labels.astype(np.int64)) if integral else None
    else:
        ids = _present_ids(labels)
        if kind == "i" and labels.size and labels.min() < 0:
            out.append(Finding("SPATIAL_LABELS_DTYPE", where, f"the label image has negative ids (down to {labels.min()}); label ids must be >= 0, 0 = background"))
    if ids is not None and not wrong_shape:  # ids of a mask of another image would mislead
        out += _check_ids(ids, cell_label_ids, where)
    return out


def _present_ids(labels: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """The sorted label ids > 0 in ``labels``, counted block by block (bounded memory)."""
    flat = labels.reshape(-1)
    if flat.size == 0:
        return np.zeros(0, np.int64)
    top = int(flat.max())
    if top <= 0:
        return np.zeros(0, np.int64)
    if top < 1 << 26:  # a presence table: linear time
        seen = np.zeros(top + 1, bool)
        for i in range(0, flat.size, block):
            b = flat[i : i + block]
            seen[np.bincount(b[b > 0].astype(np.intp), minlength=0).nonzero()[0]] = True
        return np.flatnonzero(seen).astype(np.int64)
    out = np.zeros(0, np.int64)
    for i in range(0, flat.size, block):
        b = flat[i : i + block]
        out = np.union1d(out, np.unique(b[b > 0]).astype(np.int64))
    return out


def _check_ids(ids: np.ndarray, cell_label_ids: Mapping[str, int], where: str) -> list[Finding]:
    out: list[Finding] = []
    claimed = np.fromiter((int(v) for v in cell_label_ids.values()), np.int64, len(cell_label_ids))
    unknown = np.setdiff1d(ids, claimed)
    if unknown.size:
        first = ", ".join(str(v) for v in unknown[:_SHOW]) + (", ..." if unknown.size > _SHOW else "")
        out.append(Finding("SPATIAL_LABEL_UNKNOWN", where,
                           f"{unknown.size} of the mask's {ids.size} label ids match no cell (ids {first}); add those cells to the cell table with their label ids, or set their pixels to 0",
                           severity="warning"))
    present = np.isin(claimed, ids)
    if not present.all():
        missing = [(c, int(v)) for (c, v), ok in zip(cell_label_ids.items(), present, strict=True) if not ok]
        cell, lab = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        out.append(Finding("SPATIAL_CELL_UNLABELLED", where,
                           f"cell {cell!r}{more} ha{'ve' if more else 's'} a label id absent from the mask ({cell!r}: {lab}{'' if lab > 0 else ', which is background'}); "
                           "fix the cells' label ids or add their outlines to the mask"))
    return out
