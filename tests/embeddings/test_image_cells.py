"""The image-derived cell UR on the real stardist nuclei image (125 segmented nuclei).

The cells are submitted with the image and its mask (tests/ingest/test_image_submit.py), the
crop CNN trains on their crops and ``aivc embed image`` publishes ``cell:image_cnn@1``: one
row per labelled cell, joinable to the expression UR on ``obs_id``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from aivc.store.lake import Lake
from tests.ingest.test_cite_submit import write_manifest
from tests.ingest.test_image_submit import MASK, image_manifest, write_image_submission


@pytest.fixture(scope="module")
def image_lake(tmp_path_factory: pytest.TempPathFactory, human_genes: pd.DataFrame) -> Lake:
    from aivc.embeddings.pca import PcaParams, embed_pca
    from aivc.ingest.submission import submit

    root = tmp_path_factory.mktemp("imgur")
    lake = Lake.init(root / "lake")
    data = write_image_submission(root / "sub", human_genes)
    assert submit(lake, data, write_manifest(root / "m.yaml", image_manifest(root / "sub")), report_dir=root / "r").status == "committed"
    embed_pca(lake, params=PcaParams(n_components=8, n_top_genes=50))
    return lake


@pytest.fixture(scope="module")
def published(image_lake: Lake) -> dict:
    from aivc.cli_features import register

    import typer

    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    r = CliRunner().invoke(app, ["embed", "image", "nuclei-dsb", "--epochs", "15", "--lake", str(image_lake.root), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_crops_hold_each_cell_and_its_own_mask(image_lake: Lake) -> None:
    from aivc.embeddings.image_cells import cell_crops

    cc = cell_crops(image_lake, "nuclei-dsb", crop=48)
    assert cc.crops.shape == (125, 2, 48, 48) and cc.channels == ("nuclei",) and cc.n_unlabelled == 0
    mask = tifffile.imread(MASK)
    ids = np.unique(mask[mask > 0])
    # a crop's mask channel is its own nucleus: area inside the crop <= the nucleus's area, centred
    areas = {int(i): int((mask == i).sum()) for i in ids}
    inside = cc.crops[:, 1].reshape(125, -1).sum(1)
    from aivc.embeddings.sql import query

    lab = dict(query(image_lake, "SELECT obs_id, label_id FROM spatial_cells").rows)
    got = np.array([areas[int(lab[o])] for o in cc.obs_ids])
    assert (inside <= got).all() and np.mean(inside == got) > 0.95  # a nucleus wider than 48 px is cut
    assert cc.crops[:, 1, 24, 24].mean() > 0.9  # the centre pixel is the cell's own
    assert np.isfinite(cc.crops).all() and 0.0 <= np.median(cc.crops[:, 0]) <= 1.0


def test_embed_image_publishes_a_cell_ur_joinable_to_expression(published: dict, image_lake: Lake) -> None:
    from aivc.embeddings.sql import query

    assert published["ref"] == "cell:image_cnn@1" and published["n_rows"] == 125 and published["dim"] == 16
    assert published["lineage"]["datasets"] == ["nuclei-dsb@1"] and published["lineage"]["crop_px"] == 48
    n = query(image_lake, "SELECT count(*) FROM cell_image_cnn i JOIN cell_pca p USING (obs_id) JOIN spatial_cells s USING (obs_id)").rows
    assert n == [(125,)]
    vec = np.stack(query(image_lake, "SELECT vector FROM cell_image_cnn ORDER BY obs_id").to_pandas()["vector"].to_numpy())
    assert np.isfinite(vec).all() and vec.std(0).min() > 0


def test_image_urs_are_deterministic_and_carry_morphology(image_lake: Lake, published: dict) -> None:
    """Same seed, same vectors; and a linear probe on the image URs tells large nuclei from
    small ones (median split of the mask area) far above chance, as the morphology baseline does."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.pipeline import make_pipeline

    from aivc.embeddings.image_cells import cell_crops, embed_image_cells, morphology_features
    from aivc.store.features import read_vectors

    again = embed_image_cells(image_lake, "nuclei-dsb", name="image_cnn_again", epochs=15)
    t1, v1 = read_vectors(image_lake, published["ref"])
    t2, v2 = read_vectors(image_lake, again.ref)
    assert t1.column("id").to_pylist() == t2.column("id").to_pylist()
    np.testing.assert_allclose(v1, v2, rtol=1e-4, atol=1e-5)

    cc = cell_crops(image_lake, "nuclei-dsb")
    rows = pd.Series(np.arange(len(cc.obs_ids)), index=cc.obs_ids).loc[t1.column("id").to_pylist()].to_numpy()
    area = cc.crops[rows, 1].reshape(len(rows), -1).sum(1)
    y = (area > np.median(area)).astype(int)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cnn = cross_val_score(probe, v1, y, cv=5).mean()
    morph = cross_val_score(probe, morphology_features(cc.crops[rows]), y, cv=5).mean()
    assert cnn > 0.75 and morph > 0.9, (cnn, morph)  # chance is 0.5; the baseline measures area directly


@pytest.mark.parametrize(
    ("args", "where", "message"),
    [
        (["nuclei-dsb", "--crop", "7"], "--crop", "even number"),
        (["nuclei-dsb", "--dim", "0"], "--dim", "at least 1"),
        (["nope"], "nope", "no dataset"),
        (["nuclei-dsb", "--name", "Bad Name"], "--name", "name"),
    ],
    ids=["odd-crop", "zero-dim", "unknown-dataset", "bad-name"],
)
def test_bad_image_embedding_input_is_refused(image_lake: Lake, args: list[str], where: str, message: str) -> None:
    import typer

    from aivc.cli_features import register
    from aivc.store.features import list_versions

    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    before = [v.ref for v in list_versions(image_lake)]
    r = CliRunner().invoke(app, ["embed", "image", *args, "--lake", str(image_lake.root), "--json"])
    assert r.exit_code != 0, r.output
    err = json.loads(r.output)["errors"][0]
    assert where in err["where"] and message in err["message"], err
    assert [v.ref for v in list_versions(image_lake)] == before


def test_a_dataset_without_an_image_is_refused(tmp_path: Path, image_lake: Lake) -> None:
    from aivc.demo_spatial import VISIUM_EXAMPLE, visium_manifest
    from aivc.embeddings.image_cells import embed_image_cells
    from aivc.errors import UsageError
    from aivc.ingest.submission import submit

    lake = Lake.init(tmp_path / "lake")
    assert submit(lake, VISIUM_EXAMPLE, write_manifest(tmp_path / "m.yaml", visium_manifest()), report_dir=tmp_path / "r").status == "committed"
    with pytest.raises(UsageError) as e:
        embed_image_cells(lake, "visium-sample")
    assert e.value.where == "visium-sample" and "no image with a segmentation" in str(e.value)
