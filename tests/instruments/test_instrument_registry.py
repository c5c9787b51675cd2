"""Instrument registry: numbered immutable versions of both kinds, loaders, atomic publish."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from aivc.errors import NotFoundError, UsageError
from aivc.instruments.registry import (
    InstrumentError,
    get_instrument,
    list_instruments,
    load_instrument,
    parse_instrument_ref,
    read_weights,
    register_instrument,
    register_loader,
    version_dir,
)
from aivc.store.lineage import Lineage


def _register(lake, name="shift", kind="manipulator", type="test-shift", **over):  # noqa: A002
    kw = dict(
        kind=kind, type=type, reads="cell:pca@1", weights={"delta": np.array([1.0, -2.0], dtype=np.float32)},
        outputs={"returns": "cell UR"}, metrics={"mse": 0.5}, lineage=Lineage(embedding="cell:pca@1", extra={"training_cells": {"ds": 10}}),
        config={"seed": 0},
    )  # fmt: skip
    kw.update(over)
    return register_instrument(lake, name, **kw)


class _Shift:
    """A toy manipulator: adds a learned vector (what a perturbation model's loader returns)."""

    def __init__(self, lake, record, weights):  # noqa: ANN001
        self.record, self.delta = record, weights["delta"]

    def apply(self, vectors, **condition):  # noqa: ANN001, ANN003
        return vectors + condition.get("dose", 1.0) * self.delta


def test_versions_are_numbered_immutable_and_typed(lake):
    r1 = _register(lake)
    r2 = _register(lake, metrics={"mse": 0.25})
    d = _register(lake, name="celltype", kind="decoder", type="celltype")
    assert [r.ref for r in list_instruments(lake)] == ["celltype@1", "shift@1", "shift@2"]
    assert [r.ref for r in list_instruments(lake, kind="manipulator")] == ["shift@1", "shift@2"]
    assert get_instrument(lake, "shift").ref == "shift@2" and get_instrument(lake, "shift@1") == r1
    assert (r1.kind, r1.type, r1.reads, r1.metrics, r1.lineage.extra["training_cells"]) == ("manipulator", "test-shift", "cell:pca@1", {"mse": 0.5}, {"ds": 10})
    assert r2.metrics == {"mse": 0.25} and d.kind == "decoder"
    assert (version_dir(lake, "shift", 1) / "instrument.json").is_file()
    np.testing.assert_array_equal(read_weights(lake, r1)["delta"], [1.0, -2.0])
    with pytest.raises(NotFoundError, match="has no version 9 \\(versions: 1, 2\\)"):
        get_instrument(lake, "shift@9")
    with pytest.raises(NotFoundError, match="no instrument 'other'"):
        get_instrument(lake, "other")
    assert parse_instrument_ref("celltype@latest") == ("celltype", None)
    with pytest.raises(UsageError, match="NAME\\[@VERSION\\]"):
        parse_instrument_ref("Cell Type@1")


def test_bad_definitions_are_refused(lake):
    with pytest.raises(UsageError, match="kind 'oracle'"):
        _register(lake, kind="oracle")
    with pytest.raises(UsageError, match="one exact embedding version"):
        _register(lake, reads="cell:pca")
    with pytest.raises(UsageError, match="instrument name 'Bad-Name'"):
        _register(lake, name="Bad-Name")
    assert list_instruments(lake) == []
    assert not any((lake.root / "catalog" / ".staging").iterdir())


def test_loaders_dispatch_on_kind_and_type(lake):
    rec = _register(lake)
    with pytest.raises(InstrumentError, match="manipulator of type 'test-shift', which this aivc cannot load"):
        load_instrument(lake, rec.ref)
    register_loader("manipulator", "test-shift", _Shift)
    m = load_instrument(lake, "shift@1")
    assert m.record == rec
    np.testing.assert_allclose(m.apply(np.zeros((2, 2), np.float32), dose=2.0), [[2.0, -4.0], [2.0, -4.0]])


def test_changed_weights_are_detected(lake):
    rec = _register(lake)
    w = version_dir(lake, rec.name, rec.version) / rec.weights
    data = bytearray(w.read_bytes())
    data[-30] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(InstrumentError, match="do not match the sha256"):
        read_weights(lake, rec)


def test_crash_before_publish_leaves_nothing(lake, tmp_path):
    script = tmp_path / "r.py"
    script.write_text(
        "import sys, numpy as np\n"
        "from aivc.store.lake import Lake\n"
        "from aivc.instruments.registry import register_instrument\n"
        "register_instrument(Lake.open(sys.argv[1]), 'crash', kind='decoder', type='celltype', reads='cell:pca@1',\n"
        "    weights={'w': np.ones(3)}, outputs={}, metrics={}, config={})\n"
    )
    env = {**os.environ, "AIVC_FAULT": "before_instrument_publish"}
    p = subprocess.run([sys.executable, str(script), str(lake.root)], env=env, capture_output=True, text=True)
    assert p.returncode == 19, p.stderr
    assert list_instruments(lake) == [] and not list((lake.root / "instruments").glob("crash/v*"))
    p = subprocess.run([sys.executable, str(script), str(lake.root)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert [r.ref for r in list_instruments(lake)] == ["crash@1"]
