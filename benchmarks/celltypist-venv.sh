#!/usr/bin/env bash
# Create an isolated venv holding CellTypist 1.7.1, the real peer of benchmarks/bench_annotate.py.
#
# CellTypist 1.7.1 passes `multi_class=` to scikit-learn's LogisticRegression, which
# scikit-learn >= 1.7 refuses (FACTS.md), while the project venv has a newer scikit-learn:
# CellTypist lives in its own venv and the benchmark runs it in a subprocess on files it writes.
# leidenalg is installed for majority voting (CellTypist over-clusters with scanpy's Leiden).
#
# Usage:  benchmarks/celltypist-venv.sh [VENV_DIR]     (default: <repo root>/.celltypist-venv)
# Env:    PYTHON=python3.11   interpreter used to create the venv (default python3)
#
# Idempotent: if VENV_DIR already imports celltypist 1.7.1 with scikit-learn < 1.7, nothing is done.
set -euo pipefail

CELLTYPIST_VERSION="1.7.1"
PYTHON="${PYTHON:-python3}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/.celltypist-venv}"
CHECK='import importlib.metadata as m, sklearn; v = m.version("celltypist"); assert v == "'"$CELLTYPIST_VERSION"'", v; assert tuple(map(int, sklearn.__version__.split(".")[:2])) < (1, 7), sklearn.__version__; import celltypist, leidenalg; print(v, sklearn.__version__)'

if [[ -x "$VENV_DIR/bin/python" ]] && "$VENV_DIR/bin/python" -c "$CHECK" >/dev/null 2>&1; then
    echo "celltypist-venv: $VENV_DIR already has celltypist $CELLTYPIST_VERSION; nothing to do."
    exit 0
fi

echo "celltypist-venv: creating $VENV_DIR with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m venv "$VENV_DIR"
"$VENV_DIR/bin/python" -m pip install --quiet --upgrade pip
"$VENV_DIR/bin/python" -m pip install --quiet "celltypist==$CELLTYPIST_VERSION" "scikit-learn>=1.5,<1.7" "leidenalg>=0.10"
echo "celltypist-venv: ready: $VENV_DIR (celltypist, scikit-learn: $("$VENV_DIR/bin/python" -c "$CHECK"))"
