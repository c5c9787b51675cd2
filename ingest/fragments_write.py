"""The cells' fragments of a checked fragments file, rewritten for the lake (BGZF + tabix).

:func:`write_cell_fragments` streams a file that passed
:func:`aivc.ingest.fragments.check_fragments` and keeps only the cells' lines, as they were
(only the barcode renamed when asked), in their order, dropping header lines and background
barcodes; the copy is BGZF with a tabix index, both renamed into place when complete.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aivc.errors import UsageError
from aivc.ingest.fragments import COLUMNS, cell_index, compression_of, fragment_batches, header_lines

__all__ = ["WrittenFragments", "write_cell_fragments"]


@dataclass(frozen=True)
class WrittenFragments:
    """The lake's copy of a fragments file: BGZF, tabix-indexed, the cells' fragments only."""

    path: Path
    index: Path
    n_fragments: int
    n_cells: int



def write_cell_fragments(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    cell_barcodes: Sequence[str] | pd.Index | np.ndarray,
    rename: Mapping[str, str] | None = None,
    *,
    chunk_bytes: int = 1 << 22,
) -> WrittenFragments:
    """Write the cells' fragment lines of a checked file as BGZF with a tabix index, streaming.

    Each kept line is written as it was (only its barcode renamed) and in its order, so the
    copy of a file that passed :func:`check_fragments` is sorted too; header lines and the
    fragments of other barcodes are left out. Both files are written under temporary names
    beside ``dest`` and renamed into place once complete.

    Parameters
    ----------
    src
        A fragments file that passed :func:`check_fragments` (any compression).
    dest
        Where to write (conventionally ``....tsv.gz``; its index is ``dest + ".tbi"``).
    cell_barcodes
        The cells' barcodes as ``src`` writes them.
    rename
        Barcode in ``src`` -> barcode to write (e.g. the cell table's index); cells not in
        it keep theirs. No two cells may end up with the same barcode.

    Raises
    ------
    UsageError
        ``rename`` merges cells, or ``src`` has a line without 5 columns.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pysam
    from pyarrow import csv

    src, dest = Path(src), Path(dest)
    cells = cell_index(cell_barcodes)
    names = cells.to_numpy(dtype=object) if rename is None else np.array([rename.get(c, c) for c in cells], dtype=object)
    if len(set(names)) != len(names):
        raise UsageError("rename gives two cells the same barcode; each cell needs its own", where="rename")
    compression = compression_of(src)
    n_header, has_data = header_lines(src, compression)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    options = csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    n_written = 0
    try:
        with pysam.BGZFile(str(tmp), "wb") as out:
            for batch, invalid in fragment_batches(src, compression, n_header, chunk_bytes) if has_data else ():
                if invalid:
                    raise UsageError(f"line {invalid[0][0]} has {invalid[0][1]} columns; check the file with check_fragments first", where=str(src))
                bc = batch.column(3)
                cell = cells.get_indexer(bc.dictionary.to_numpy(zero_copy_only=False))[bc.indices.to_numpy(zero_copy_only=False)]
                keep = cell >= 0
                if keep.any():
                    columns = [pc.filter(batch.column(i), pa.array(keep)).cast(pa.string()) for i in range(5)]
                    columns[3] = pa.array(names[cell[keep]], type=pa.string())
                    sink = pa.BufferOutputStream()
                    csv.write_csv(pa.table(columns, names=list(COLUMNS)), sink, options)
                    out.write(sink.getvalue().to_pybytes())
                    n_written += int(keep.sum())
        pysam.tabix_index(str(tmp), preset="bed", force=True, index=f"{tmp}.tbi")
        os.replace(f"{tmp}.tbi", f"{dest}.tbi")
        os.replace(tmp, dest)
    finally:
        for leftover in (tmp, Path(f"{tmp}.tbi")):
            leftover.unlink(missing_ok=True)
    return WrittenFragments(dest, Path(f"{dest}.tbi"), n_written, len(cells))
