"""Submitted image files: reading TIFF / OME-TIFF / PNG / JPEG, and the findings on them.

Real images from the stardist 0.9.1 wheel (tests/ingest/data/images/PROVENANCE.md); bad
inputs are crafted from them in tmp_path, one mistake each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from aivc.errors import Finding, UsageError
from aivc.ingest.images import ImageFile, check_declared, check_labels, read_image_file
from aivc.ingest.readers import UnreadableDataError

DATA = Path(__file__).resolve().parent / "data" / "images"


@pytest.fixture(scope="module")
def nuclei() -> ImageFile:
    return read_image_file(DATA / "nuclei2d.tif")


@pytest.fixture(scope="module")
def ome() -> ImageFile:
    return read_image_file(DATA / "nuclei_2ch.ome.tif")


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    return read_image_file(DATA / "nuclei2d_mask.tif").array


@pytest.fixture(scope="module")
def cells(mask: np.ndarray) -> dict[str, int]:
    """One cell per nucleus of the mask, named after its label id."""
    return {f"cell_{i}": int(i) for i in np.unique(mask) if i > 0}


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def test_tiff_reads_the_nuclei_image_and_mask(nuclei: ImageFile, mask: np.ndarray) -> None:
    assert (nuclei.axes, nuclei.dtype, nuclei.shape, nuclei.channel_names, nuclei.pixel_size_um) == ("yx", "uint16", (512, 512), None, None)
    assert (int(nuclei.array.min()), int(nuclei.array.max())) == (0, 235)
    assert nuclei.path.endswith("nuclei2d.tif")
    ids = np.unique(mask)
    assert mask.dtype == np.uint16 and len(ids) - 1 == 125 and int(ids[-1]) == 183


def test_ome_tiff_gives_channel_names_and_pixel_size(ome: ImageFile, nuclei: ImageFile) -> None:
    assert (ome.axes, ome.shape, ome.n_channels) == ("cyx", (2, 512, 512), 2)
    assert ome.channel_names == ("nuclei", "nuclei_edges")
    assert ome.pixel_size_um == pytest.approx(0.65)
    assert np.array_equal(ome.array[0], nuclei.array)
    assert int(ome.array[1].max()) == 255


def test_jpeg_and_rgba_png_are_channel_first(tmp_path: Path) -> None:
    from PIL import Image

    he = read_image_file(DATA / "histo.jpg")
    assert (he.axes, he.dtype, he.shape, he.pixel_size_um) == ("cyx", "uint8", (3, 300, 500), None)
    png = read_image_file(DATA / "histo_rgba.png")
    assert (png.axes, png.shape) == ("cyx", (4, 128, 128))
    assert np.array_equal(png.array[:3], he.array[:, 100:228, 50:178])
    assert int(png.array[3, :16, :16].max()) == 0 and int(png.array[3, 16:, 16:].min()) == 255
    grey = tmp_path / "grey.png"  # recognised by its bytes, not its name
    Image.fromarray(he.array[0]).save(grey, format="PNG")
    grey.rename(tmp_path / "grey.tif")
    g = read_image_file(tmp_path / "grey.tif")
    assert g.axes == "yx" and np.array_equal(g.array, he.array[0])


def test_unlabelled_stack_is_a_z_stack() -> None:
    stack = read_image_file(DATA / "stack3d.tif")
    assert (stack.axes, stack.shape, stack.n_channels) == ("zyx", (31, 61, 57), 1)


def test_imagej_and_nanometre_pixel_sizes(tmp_path: Path, nuclei: ImageFile) -> None:
    tifffile.imwrite(tmp_path / "ij.tif", nuclei.array, imagej=True, resolution=(1 / 0.325, 1 / 0.325), metadata={"unit": "um"})
    assert read_image_file(tmp_path / "ij.tif").pixel_size_um == pytest.approx(0.325)
    tifffile.imwrite(tmp_path / "nm.ome.tif", nuclei.array, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 325, "PhysicalSizeXUnit": "nm"})
    assert read_image_file(tmp_path / "nm.ome.tif").pixel_size_um == pytest.approx(0.325)
    rgb = np.stack([nuclei.array] * 3, axis=-1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    r = read_image_file(tmp_path / "rgb.tif")
    assert (r.axes, r.shape) == ("cyx", (3, 512, 512)) and np.array_equal(r.array[1], rgb[..., 1])


def test_unreadable_files_raise_with_the_path(tmp_path: Path, nuclei: ImageFile) -> None:
    (tmp_path / "notes.tif").write_text("not an image")
    (tmp_path / "cut.tif").write_bytes((DATA / "nuclei2d.tif").read_bytes()[:3000])
    (tmp_path / "cut.png").write_bytes((DATA / "histo_rgba.png").read_bytes()[:2000])
    tifffile.imwrite(tmp_path / "4d.ome.tif", np.zeros((2, 3, 16, 16), np.uint8), ome=True, metadata={"axes": "CZYX"})
    tifffile.imwrite(tmp_path / "time.ome.tif", np.zeros((3, 16, 16), np.uint8), ome=True, metadata={"axes": "TYX"})
    for name in ("notes.tif", "cut.tif", "cut.png", "4d.ome.tif", "time.ome.tif"):
        with pytest.raises(UnreadableDataError) as e:
            read_image_file(tmp_path / name)
        assert e.value.where == str(tmp_path / name) and "\n" not in e.value.message, name
    with pytest.raises(UsageError) as missing:
        read_image_file(tmp_path / "absent.tif")
    assert type(missing.value) is UsageError


def test_check_declared_passes_what_matches(ome: ImageFile, nuclei: ImageFile) -> None:
    assert check_declared(ome, channels=["nuclei", "nuclei_edges"], pixel_size_um=0.652, dtype="uint16", where="w") == []
    assert check_declared(ome, channels=["Nuclei ", "NUCLEI_EDGES"], pixel_size_um=None, dtype=None, where="w") == []
    assert check_declared(nuclei, channels=["DAPI"], pixel_size_um=0.3, dtype="uint16", where="w") == []  # no pixel size in the file
    assert check_declared(nuclei, channels=None, pixel_size_um=None, dtype=None, where="w") == []


@pytest.mark.parametrize(
    ("channels", "pixel_size_um", "dtype", "code", "says"),
    [
        (["nuclei"], None, None, "SPATIAL_IMAGE_CHANNELS", "declares 1 channels"),
        (["nuclei", "CD3"], None, None, "SPATIAL_IMAGE_CHANNELS", "channel 2 is named 'nuclei_edges'"),
        (["nuclei_edges", "nuclei"], None, None, "SPATIAL_IMAGE_CHANNELS", "another order"),
        (None, None, "uint8", "SPATIAL_IMAGE_DTYPE", "declares uint8"),
        (None, None, "uint12", "SPATIAL_IMAGE_DTYPE", "not a pixel type"),
        (None, 0.7, None, "SPATIAL_IMAGE_PIXEL_SIZE", "0.65 µm per pixel"),
    ],
)
def test_check_declared_finds_each_mistake(ome: ImageFile, channels: list[str] | None, pixel_size_um: float | None, dtype: str | None, code: str, says: str) -> None:
    found = check_declared(ome, channels=channels, pixel_size_um=pixel_size_um, dtype=dtype, where="images[0]")
    assert codes(found) == [code]
    assert says in found[0].message and found[0].where == "images[0]" and "\n" not in found[0].message


def test_a_boolean_image_is_not_a_pixel_type(nuclei: ImageFile) -> None:
    binary = ImageFile(nuclei.array > 50, "yx", "bool", nuclei.shape, None, None, "b.tif")
    assert codes(check_declared(binary, channels=None, pixel_size_um=None, dtype=None, where="w")) == ["SPATIAL_IMAGE_DTYPE"]


def test_check_labels_passes_the_real_mask(mask: np.ndarray, cells: dict[str, int]) -> None:
    assert check_labels(mask, (512, 512), cells, where="labels") == []


def test_check_labels_finds_each_mistake(mask: np.ndarray, cells: dict[str, int]) -> None:
    shape = check_labels(mask[:500], (512, 512), cells, where="m")
    assert codes(shape) == ["SPATIAL_LABELS_SHAPE"] and "500 x 512" in shape[0].message
    assert codes(check_labels(mask.astype(np.float32), (512, 512), cells, where="m")) == ["SPATIAL_LABELS_DTYPE"]
    assert codes(check_labels(mask > 0, (512, 512), cells, where="m")) == ["SPATIAL_LABELS_DTYPE"]
    negative = mask.astype(np.int32)
    negative[0, 0] = -1
    assert codes(check_labels(negative, (512, 512), cells, where="m")) == ["SPATIAL_LABELS_DTYPE"]
    fewer = {c: i for c, i in cells.items() if i not in (7, 50, 183)}
    unknown = check_labels(mask, (512, 512), fewer, where="m")
    assert codes(unknown) == ["SPATIAL_LABEL_UNKNOWN"] and unknown[0].severity == "warning"
    assert "3 of the mask's 125 label ids" in unknown[0].message and "ids 7, 50, 183" in unknown[0].message
    extra = {**cells, "ghost": 999, "bg": 0}
    unlabelled = check_labels(mask, (512, 512), extra, where="m")
    assert codes(unlabelled) == ["SPATIAL_CELL_UNLABELLED"] and unlabelled[0].severity == "error"
    assert "cell 'ghost' and 1 more" in unlabelled[0].message and "999" in unlabelled[0].message


def test_check_labels_on_a_z_stack_mask() -> None:
    smask = read_image_file(DATA / "stack3d_mask.tif").array
    ids = {f"c{i}": int(i) for i in np.unique(smask) if i > 0}
    assert len(ids) == 51 and check_labels(smask, (61, 57), ids, where="m") == []
