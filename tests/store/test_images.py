"""OME-Zarr images: pyramids, metadata, windows, labels, and what other readers see.

The images are real: stardist 0.9.1's 512 x 512 nuclei image and its 125-nucleus mask, the
H&E JPEG and the 3-D stack (tests/ingest/data/images/PROVENANCE.md), read with tifffile and
Pillow directly so that these tests do not depend on aivc.ingest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from aivc.errors import NotFoundError, UsageError
from aivc.store import images
from aivc.store.images import SCHEMA_NAME, ImageInfo, image_info, read_level, read_tile, write_ome_zarr

DATA = Path(__file__).resolve().parents[1] / "ingest" / "data" / "images"


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    return tifffile.imread(DATA / "nuclei2d.tif")


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    return tifffile.imread(DATA / "nuclei2d_mask.tif")


@pytest.fixture(scope="module")
def two_channel() -> np.ndarray:
    return tifffile.imread(DATA / "nuclei_2ch.ome.tif")


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return np.asarray(Image.open(DATA / "histo.jpg").convert("RGB"))  # (300, 500, 3)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, two_channel: np.ndarray, mask: np.ndarray) -> tuple[Path, ImageInfo]:
    dest = tmp_path_factory.mktemp("img") / "nuclei.ome.zarr"
    info = write_ome_zarr(two_channel, dest, channel_names=["nuclei", "nuclei_edges"], pixel_size_um=0.65, labels={"cells": mask})
    return dest, info


def mean_pyramid(a: np.ndarray, n: int) -> list[np.ndarray]:
    """The reference: floor-halve y and x with a rounded 2x2 mean, n - 1 times (leading axis kept)."""
    out = [a]
    for _ in range(n - 1):
        b = out[-1].astype(np.int64)
        h, w = b.shape[-2] // 2 * 2, b.shape[-1] // 2 * 2
        b = b[..., :h, :w]
        s = b[..., 0::2, 0::2] + b[..., 1::2, 0::2] + b[..., 0::2, 1::2] + b[..., 1::2, 1::2]
        out.append(((s + 2) // 4).astype(a.dtype))
    return out


def test_levels_scales_and_channels_of_the_nuclei_image(written: tuple[Path, ImageInfo]) -> None:
    dest, info = written
    assert info == image_info(dest)
    assert (info.name, info.axes, info.dtype, info.shape) == ("nuclei", "cyx", "uint16", (2, 512, 512))
    assert [lv.shape for lv in info.levels] == [(2, 512, 512), (2, 256, 256)]
    assert [lv.chunks for lv in info.levels] == [(1, 512, 512), (1, 256, 256)]
    assert [lv.scale for lv in info.levels] == [(1.0, 0.65, 0.65), (1.0, 1.3, 1.3)]
    assert info.channel_names == ("nuclei", "nuclei_edges")
    assert info.pixel_size_um == 0.65
    assert info.labels == ("cells",)


def test_plain_zarr_reads_the_declared_arrays_and_metadata(written: tuple[Path, ImageInfo], two_channel: np.ndarray) -> None:
    dest, _ = written
    root = zarr.open_group(dest, mode="r")
    assert root.metadata.zarr_format == 2
    assert (root["0"].shape, root["0"].dtype) == ((2, 512, 512), np.dtype("uint16"))
    assert np.array_equal(root["0"][...], two_channel)
    attrs = json.loads((dest / ".zattrs").read_text())
    assert attrs["aivc"]["schema_name"] == SCHEMA_NAME and attrs["aivc"]["schema_version"] == 1
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["nuclei", "nuclei_edges"]
    label_attrs = json.loads((dest / "labels" / "cells" / ".zattrs").read_text())
    assert json.loads((dest / "labels" / ".zattrs").read_text()) == {"labels": ["cells"]}
    assert label_attrs["image-label"]["version"] == "0.4"
    assert root["labels/cells/0"].dtype == np.dtype("uint16")


@pytest.mark.parametrize("band_bytes", [None, 1])
def test_intensity_levels_are_rounded_2x2_means(tmp_path: Path, he: np.ndarray, band_bytes: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    # yxc input, small chunks: several bands per level, odd sides (75 -> 37), the cascade in full;
    # band_bytes=1: one channel per band (how a wide many-channel image is written)
    if band_bytes is not None:
        monkeypatch.setattr(images, "BAND_BYTES", band_bytes)
    info = write_ome_zarr(he, tmp_path / "he.ome.zarr", axes="yxc", channel_names=None, pixel_size_um=None, chunk=64, min_level_size=64)
    cyx = np.moveaxis(he, -1, 0)
    assert [lv.shape for lv in info.levels] == [(3, 300, 500), (3, 150, 250), (3, 75, 125), (3, 37, 62)]
    assert [lv.scale for lv in info.levels] == [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0), (1.0, 4.0, 4.0), (1.0, 8.0, 8.0)]
    assert info.pixel_size_um is None and info.channel_names is None
    for level, want in enumerate(mean_pyramid(cyx, 4)):
        got = read_level(tmp_path / "he.ome.zarr", level).compute()
        assert got.dtype == np.uint8 and np.array_equal(got, want), level


def test_label_levels_keep_ids_exactly(written: tuple[Path, ImageInfo], mask: np.ndarray) -> None:
    dest, _ = written
    level0 = read_level(dest, 0, label="cells").compute()
    level1 = read_level(dest, 1, label="cells").compute()
    assert level0.dtype == np.uint16 and np.array_equal(level0, mask)
    ids = set(np.unique(mask).tolist())
    assert len(ids - {0}) == 125
    assert set(np.unique(level1).tolist()) <= ids  # nearest: never a blended, new id
    assert np.array_equal(level1, mask[::2, ::2])


def test_read_tile_equals_the_numpy_window(written: tuple[Path, ImageInfo], two_channel: np.ndarray, mask: np.ndarray) -> None:
    dest, _ = written
    assert np.array_equal(read_tile(dest, 0, 100, 37, 200, 300), two_channel[:, 100:300, 37:337])
    assert np.array_equal(read_tile(dest, 0, 400, 450, 512, 512), two_channel[:, 400:, 450:])  # cut at the edge
    assert np.array_equal(read_tile(dest, 1, 10, 20, 30, 40), mean_pyramid(two_channel, 2)[1][:, 10:40, 20:60])
    assert np.array_equal(read_tile(dest, 0, 250, 250, 64, 64, label="cells"), mask[250:314, 250:314])


def test_read_level_is_lazy(written: tuple[Path, ImageInfo], two_channel: np.ndarray) -> None:
    import dask.array as da

    lazy = read_level(written[0], 0)
    assert isinstance(lazy, da.Array) and lazy.shape == (2, 512, 512) and lazy.chunksize == (1, 512, 512)
    assert int(lazy[1].max().compute()) == int(two_channel[1].max())


def test_ome_zarr_reader_sees_levels_channels_and_labels(written: tuple[Path, ImageInfo]) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(written[0])))())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs)
    assert [d.shape for d in image.data] == [(2, 512, 512), (2, 256, 256)]
    assert image.metadata["channel_names"] == ["nuclei", "nuclei_edges"]
    assert image.metadata["coordinateTransformations"][1] == [{"type": "scale", "scale": [1.0, 1.3, 1.3]}]
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1 and [d.shape for d in labels[0].data] == [(512, 512), (256, 256)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ome-zarr's Scaler, at spatialdata's import
def test_spatialdata_takes_the_image_and_labels(tmp_path: Path, written: tuple[Path, ImageInfo], two_channel: np.ndarray, mask: np.ndarray) -> None:
    import spatialdata as sd
    from spatialdata.models import Image2DModel, Labels2DModel
    from spatialdata.transformations import Scale, get_transformation

    dest, info = written
    image = Image2DModel.parse(read_level(dest, 0), dims=("c", "y", "x"), c_coords=list(info.channel_names or ()),
                               transformations={"global": Scale([info.pixel_size_um] * 2, axes=("y", "x"))})
    labels = Labels2DModel.parse(read_level(dest, 0, label="cells"), dims=("y", "x"))
    sd.SpatialData(images={"nuclei": image}, labels={"cells": labels}).write(tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    assert np.array_equal(back.images["nuclei"].values, two_channel)
    assert list(back.images["nuclei"].c.values) == ["nuclei", "nuclei_edges"]
    assert np.array_equal(back.labels["cells"].values, mask)
    assert np.allclose(get_transformation(back.images["nuclei"]).to_affine_matrix(("y", "x"), ("y", "x"))[:2, :2], np.diag([0.65, 0.65]))


def test_2d_image_from_dask_with_progress_and_more_levels(tmp_path: Path, nuclei: np.ndarray, mask: np.ndarray) -> None:
    import dask.array as da

    calls: list[int] = []
    info = write_ome_zarr(da.from_array(nuclei, chunks=(100, 512)), tmp_path / "n.ome.zarr", axes="yx", channel_names=None, pixel_size_um=0.5,
                          chunk=128, min_level_size=64, labels={"nuclei": da.from_array(mask, chunks=256)}, progress=calls.append)
    assert info.axes == "yx" and [lv.shape for lv in info.levels] == [(512, 512), (256, 256), (128, 128), (64, 64)]
    assert info.levels[3].chunks == (64, 64) and info.levels[3].scale == (4.0, 4.0)
    assert sum(calls) == 2 * 512
    for level, want in enumerate(mean_pyramid(nuclei, 4)):
        assert np.array_equal(read_level(tmp_path / "n.ome.zarr", level).compute(), want)
        lab = read_level(tmp_path / "n.ome.zarr", level, label="nuclei").compute()
        assert np.array_equal(lab, mask[:: 2**level, :: 2**level])


def test_z_stack_keeps_z_and_halves_y_x(tmp_path: Path) -> None:
    stack, smask = tifffile.imread(DATA / "stack3d.tif"), tifffile.imread(DATA / "stack3d_mask.tif")
    info = write_ome_zarr(stack, tmp_path / "z.ome.zarr", axes="zyx", channel_names=None, pixel_size_um=None, min_level_size=16, labels={"nuclei": smask})
    assert [lv.shape for lv in info.levels] == [(31, 61, 57), (31, 30, 28), (31, 15, 14)]
    assert info.levels[2].scale == (1.0, 4.0, 4.0)
    assert np.array_equal(read_level(tmp_path / "z.ome.zarr", 2).compute(), mean_pyramid(stack, 3)[2])
    assert np.array_equal(read_tile(tmp_path / "z.ome.zarr", 0, 5, 6, 20, 20, label="nuclei"), smask[:, 5:25, 6:26])


def test_readers_accept_an_image_written_by_ome_zarr(tmp_path: Path, nuclei: np.ndarray) -> None:
    from ome_zarr.writer import write_image

    group = zarr.open_group(tmp_path / "peer.zarr", mode="w")  # NGFF 0.5, zarr v3, datasets s0, s1, ...
    write_image(nuclei, group, axes="yx", scale_factors=(2,), storage_options={"chunks": (256, 256)})
    info = image_info(tmp_path / "peer.zarr")
    assert [lv.shape for lv in info.levels] == [(512, 512), (256, 256)] and info.pixel_size_um is None
    assert np.array_equal(read_tile(tmp_path / "peer.zarr", 0, 3, 4, 10, 10), nuclei[3:13, 4:14])


def test_a_failed_write_leaves_nothing(tmp_path: Path, nuclei: np.ndarray) -> None:
    import dask.array as da

    def boom(block: np.ndarray) -> np.ndarray:
        raise RuntimeError("disk full")

    broken = da.from_array(nuclei, chunks=128).map_blocks(boom, dtype=nuclei.dtype)
    with pytest.raises(RuntimeError):
        write_ome_zarr(broken, tmp_path / "x.ome.zarr", axes="yx", channel_names=None, pixel_size_um=None, chunk=128)
    assert list(tmp_path.iterdir()) == []


def test_errors_are_typed_one_line_messages(tmp_path: Path, nuclei: np.ndarray, mask: np.ndarray, written: tuple[Path, ImageInfo]) -> None:
    dest, _ = written
    (tmp_path / "folder").mkdir()
    zarr.open_group(tmp_path / "plain.zarr", mode="w")
    cases = [
        (NotFoundError, lambda: image_info(tmp_path / "missing.ome.zarr")),
        (UsageError, lambda: image_info(tmp_path / "folder")),
        (UsageError, lambda: read_tile(tmp_path / "plain.zarr", 0, 0, 0, 1, 1)),
        (UsageError, lambda: read_tile(dest, 2, 0, 0, 8, 8)),
        (UsageError, lambda: read_tile(dest, 0, -1, 0, 8, 8)),
        (NotFoundError, lambda: read_level(dest, 0, label="nuclei")),
        (UsageError, lambda: write_ome_zarr(nuclei, dest, axes="yx", channel_names=None, pixel_size_um=None)),
        (UsageError, lambda: write_ome_zarr(nuclei, tmp_path / "a", axes="yx", channel_names=["a"], pixel_size_um=None)),
        (UsageError, lambda: write_ome_zarr(nuclei, tmp_path / "b", axes="yx", channel_names=None, pixel_size_um=None, labels={"m": mask[:500]})),
        (UsageError, lambda: write_ome_zarr(nuclei, tmp_path / "c", axes="yx", channel_names=None, pixel_size_um=None, labels={"m": mask.astype(np.float32)})),
        (UsageError, lambda: write_ome_zarr(nuclei[None, None], tmp_path / "d", axes="cyx", channel_names=None, pixel_size_um=None)),
        (UsageError, lambda: write_ome_zarr(nuclei, tmp_path / "e", axes="yx", channel_names=None, pixel_size_um=-1.0)),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as e:
            call()
        assert type(e.value) is kind and "\n" not in str(e.value) and len(str(e.value)) < 300
    assert not any(p.name in "abcde" for p in tmp_path.iterdir())


def test_overwrite_replaces_the_image(tmp_path: Path, nuclei: np.ndarray) -> None:
    dest = tmp_path / "n.ome.zarr"
    write_ome_zarr(nuclei, dest, axes="yx", channel_names=None, pixel_size_um=None)
    assert read_tile(dest, 0, 0, 0, 4, 4).shape == (4, 4)
    info = write_ome_zarr(np.stack([nuclei, nuclei]), dest, channel_names=["a", "b"], pixel_size_um=None, overwrite=True)
    assert info.shape == (2, 512, 512) and read_tile(dest, 0, 0, 0, 4, 4).shape == (2, 4, 4)
