"""The report of a niche-domain prediction version: tissue maps coloured by predicted domain.

Per dataset: the niches annotated, how many fall in each predicted domain, the mean calibrated
probability, how many are uncertain (a conformal set of more or fewer than one domain) or
abstained (novel), and a map of the slide: every niche at its centre's location (the lake's
full-resolution frame, y downwards as in the image), coloured by its predicted domain, with
uncertain ones drawn hollow. When the decoder was trained from an obs column and a dataset
has that column, the predictions are scored against it (accuracy, set coverage; for the
datasets it trained on this is in-sample and said so).

``report.json`` (schema ``aivc.niche_domain_report``), a self-contained ``report.html`` (the
maps as inline PNG) and each map as ``tissue_map_<dataset>.png`` (600 x 600 px) are written
into the prediction version's folder.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from aivc.instruments.registry import InstrumentRecord
from aivc.store.lake import Lake

SCHEMA = "aivc.niche_domain_report"
MAP_SIZE = (6.0, 6.0)  # inches at 100 dpi: 600 x 600 px


def _map_png(frame: pd.DataFrame, domains: list[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=MAP_SIZE, dpi=100)
    cmap = plt.get_cmap("tab20" if len(domains) > 10 else "tab10")
    sure = (frame["set_size"] == 1) & ~frame["abstain"]
    for i, d in enumerate(domains):
        m = (frame["predicted_domain"] == d).to_numpy()
        colour = cmap(i % cmap.N)
        ax.scatter(frame.loc[m & sure, "x"], frame.loc[m & sure, "y"], s=14, color=colour, label=d, linewidths=0)
        ax.scatter(frame.loc[m & ~sure, "x"], frame.loc[m & ~sure, "y"], s=14, facecolors="none", edgecolors=[colour], linewidths=0.8)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=1.5, loc="best", title="predicted domain (hollow: uncertain)", title_fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _score(lake: Lake, v: Any, frame: pd.DataFrame, column: str) -> dict[str, Any] | None:
    from aivc.store.read import submitted_obs

    obs = submitted_obs(lake, v)
    if column not in obs.columns:
        return None
    truth = frame.merge(obs[["barcode", column]], on="barcode", how="left")[column].astype("string").fillna("").str.strip()
    known = (truth != "") & ~truth.str.lower().isin({"unknown", "na", "nan", "none"})
    if not known.any():
        return None
    t, p = truth[known].to_numpy(), frame.loc[known.to_numpy(), "predicted_domain"].to_numpy()
    sets = frame.loc[known.to_numpy(), "prediction_set"]
    covered = np.fromiter((a in s for a, s in zip(t, sets, strict=True)), bool, len(t))
    return {"n_labelled": int(known.sum()), "accuracy": float(np.mean(t == p)), "set_coverage": float(covered.mean())}


class DomainReport:
    """A computed niche-domain report; :meth:`write` puts it into the version folder."""

    def __init__(self, data: dict[str, Any], images: dict[str, bytes]) -> None:
        self.data, self.images = data, images

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.data["summary"])

    def write(self, folder: Any, record: Any = None) -> tuple[Path, Path]:
        from aivc.store.storage import write_atomic

        data = dict(self.data)
        if record is not None:
            data["prediction"], data["created_at"] = record.ref, record.created_at
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        j, h = folder / "report.json", folder / "report.html"
        for d, png in self.images.items():
            write_atomic(folder / map_name(d), png)
        write_atomic(j, (json.dumps({"schema_name": SCHEMA, "schema_version": 1, **data}, indent=2, allow_nan=False, default=str) + "\n").encode())
        write_atomic(h, self._html(data).encode())
        return j, h

    def _html(self, data: dict[str, Any]) -> str:
        e = html.escape
        title = f"aivc tissue-domain report: {data.get('prediction') or data['instrument']}"
        parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{padding:2px 8px;text-align:right}th:first-child,td:first-child{text-align:left}</style></head><body>",
                 f"<h1>{e(title)}</h1><p>{e(data['summary']['description'])}</p>"]  # fmt: skip
        for d, entry in data["datasets"].items():
            parts.append(f"<h2>{e(d)}</h2><p>{entry['n_niches']} niches ({e(entry['role'])}); mean probability {entry['mean_probability']:.3f}; "
                         f"{entry['n_uncertain']} uncertain, {entry['n_abstain']} abstained</p>")  # fmt: skip
            rows = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in entry["domains"].items())
            parts.append(f"<table><tr><th>predicted domain</th><th>niches</th></tr>{rows}</table>")
            if entry.get("agreement"):
                a = entry["agreement"]
                parts.append(f"<p>against obs[{e(str(data['label']))}] ({a['n_labelled']} labelled niches): accuracy {a['accuracy']:.1%}, set coverage {a['set_coverage']:.1%}</p>")
            if d in self.images:
                b64 = base64.b64encode(self.images[d]).decode("ascii")
                parts.append(f"<img alt='tissue map of {e(d)}' src='data:image/png;base64,{b64}'>")
        return "".join(parts) + "</body></html>"


def map_name(dataset_id: str) -> str:
    """The file name of a dataset's tissue map in the report folder."""
    return f"tissue_map_{dataset_id}.png"


def build_domain_report(lake: Lake, folder: Any, rec: InstrumentRecord, **_: Any) -> DomainReport:
    """Maps and tables of the staged (or published) prediction rows in ``folder``."""
    import pyarrow.dataset as pds

    from aivc.store.catalog import Catalog
    from aivc.store.read import version_cells
    from aivc.store.spatial import read_locations

    files = sorted(str(f) for f in Path(folder).rglob("*.parquet"))
    pred = pds.dataset(files, format="parquet").to_table().to_pandas() if files else pd.DataFrame(columns=["obs_id", "dataset_id"])
    domains = [str(c["term_id"]) for c in rec.outputs.get("classes", [])]
    trained = {r.partition("@")[0] for r in rec.lineage.datasets} if rec.lineage else set()
    label = rec.config.get("label")
    cat, out, images = Catalog(lake), {}, {}
    for d in sorted(pred["dataset_id"].unique()):
        rows = pred[pred["dataset_id"] == d]
        v = cat.get(rows["obs_id"].iloc[0].partition(":")[0])
        frame = rows.merge(read_locations(lake, v)[["obs_id", "x", "y"]], on="obs_id", how="left")
        frame = frame.merge(version_cells(lake, v, ["obs_id", "barcode"]), on="obs_id", how="left")
        frame["prediction_set"] = frame["prediction_set"].map(list)
        uncertain = ((frame["set_size"] != 1) | frame["abstain"]).to_numpy()
        entry: dict[str, Any] = {
            "dataset_version": v.ref, "role": "trained on (in-sample)" if d in trained else "held out", "n_niches": int(len(frame)),
            "domains": {k: int((frame["predicted_domain"] == k).sum()) for k in domains},
            "mean_probability": float(frame["probability"].mean()), "n_uncertain": int(uncertain.sum()), "n_abstain": int(frame["abstain"].sum()),
        }  # fmt: skip
        if label:
            entry["agreement"] = _score(lake, v, frame, str(label))
        located = frame.dropna(subset=["x", "y"])
        if len(located):
            images[d] = _map_png(located, domains, f"{v.ref}: predicted tissue domain ({rec.ref})")
        entry["map"] = map_name(d) if d in images else None
        out[d] = entry
    summary = {
        "n_niches": int(len(pred)), "domains": domains, "n_uncertain": int(sum(e["n_uncertain"] for e in out.values())),
        "description": f"{rec.ref} over {rec.reads}: {len(domains)} tissue domains, conformal sets at alpha={rec.outputs.get('alpha')} "
        f"({rec.config.get('cv', 'random')} cross-fitting; uncertain: a set of 0 or several domains, or abstained)",
    }  # fmt: skip
    return DomainReport({"summary": summary, "datasets": out, "instrument": rec.ref, "embedding": rec.reads, "label": label}, images)


__all__ = ["DomainReport", "build_domain_report", "map_name"]
