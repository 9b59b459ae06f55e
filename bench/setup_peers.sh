#!/usr/bin/env bash
# Install the peers we benchmark against into the project's venv (not reidkit deps):
# torchreid 0.2.5 (with the dependencies it does not declare) and fastreid 1.4.0
# (--no-deps, its small dependencies, and its Cython rank_cylib built in place).
set -euo pipefail
PY=${PY:-$PWD/.venv/bin/python}
$PY -m pip install -q torchreid==0.2.5 scipy opencv-python-headless tensorboard h5py gdown \
    imageio yacs termcolor tabulate scikit-learn cython setuptools faiss-cpu
$PY -m pip install -q --no-deps fastreid==1.4.0
site=$($PY -c "import fastreid, os; print(os.path.dirname(fastreid.__file__))")
(cd "$site/evaluation/rank_cylib" && $PY setup.py build_ext --inplace >/dev/null && rm -rf build)
$PY -c "import bench.peers as p; p.fastreid_rank(); print('peers ready')"
