#!/usr/bin/env bash
# Fill the git-ignored folders that travel to an offline GPU machine with bench/gpu_check.sh
# (carry: .whl .gpu_peers .gpu_data; about 40 MB in all):
#   .whl/        wheels the machine lacks (pydantic and its parts for Python 3.12; gdown for torchreid)
#   .gpu_peers/  torchreid 0.2.5 as installed in the venv by `make bench-peers` (pure Python)
#   .gpu_data/   the 128x64 copy of CUHK03-labeled and the MSMT17 OSNet x0.25 ONNX (a teacher) from ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for d in /.whl/ /.gpu_peers/ /.gpu_data/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
rm -rf .whl .gpu_peers && mkdir -p .whl .gpu_peers .gpu_data/cuhk03
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d .whl pydantic pydantic-core annotated-types typing-inspection typing-extensions gdown beautifulsoup4 soupsieve
cp -r "$($PY -c 'import torchreid, os; print(os.path.dirname(torchreid.__file__))')" .gpu_peers/
find .gpu_peers -name __pycache__ -prune -exec rm -rf {} +
[ -d .gpu_data/cuhk03/labeled_128x64 ] || cp -r ../shared/data/cuhk03/labeled_128x64 .gpu_data/cuhk03/
mkdir -p .gpu_data/weights && cp ../shared/data/weights/osnet_x0_25_msmt17.onnx .gpu_data/weights/
du -sh .whl .gpu_peers .gpu_data
