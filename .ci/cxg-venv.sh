#!/usr/bin/env bash
# Create an isolated venv holding cellxgene-schema, used to check that aivc's
# exported .h5ad files pass `cellxgene-schema validate` (CELLxGENE schema 7.x).
#
# cellxgene-schema pins old anndata/dask/scipy, so it must never be installed
# into the project venv; it lives in its own venv instead.
#
# Usage:  .ci/cxg-venv.sh [VENV_DIR]        (default: <repo root>/.cxg-venv)
# Env:    PYTHON=python3.11  interpreter used to create the venv (default python3)
#         CXG_SCHEMA_VERSION  override the pinned cellxgene-schema version
#
# Idempotent: if VENV_DIR/bin/cellxgene-schema already runs and reports the
# pinned version, nothing is done.
set -euo pipefail

CXG_SCHEMA_VERSION="${CXG_SCHEMA_VERSION:-7.1.2}"   # validates CELLxGENE schema 7.1.x
PYTHON="${PYTHON:-python3}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/.cxg-venv}"
CXG_BIN="$VENV_DIR/bin/cellxgene-schema"

if [[ -x "$CXG_BIN" ]] && "$CXG_BIN" --help >/dev/null 2>&1 \
   && [[ "$("$VENV_DIR/bin/python" -c 'import importlib.metadata as m; print(m.version("cellxgene-schema"))' 2>/dev/null)" == "$CXG_SCHEMA_VERSION" ]]; then
    echo "cxg-venv: $VENV_DIR already has cellxgene-schema $CXG_SCHEMA_VERSION; nothing to do."
    exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "cellxgene-schema needs Python >= 3.10"'

echo "cxg-venv: creating $VENV_DIR with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
"$VENV_DIR/bin/python" -m pip install --quiet "cellxgene-schema==$CXG_SCHEMA_VERSION"

"$CXG_BIN" validate --help >/dev/null
echo "cxg-venv: ready: $CXG_BIN ($("$VENV_DIR/bin/python" -c 'import importlib.metadata as m; print(m.version("cellxgene-schema"))'))"
