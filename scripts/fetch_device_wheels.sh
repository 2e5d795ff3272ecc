#!/usr/bin/env bash
# Download the wheels a GPU machine without a package registry needs to run the course's
# notebooks through nbval, the GPU tests and labkit bench's progress bars (its image has torch,
# triton, numba, numba-cuda, numpy and pytest, but no Jupyter stack, no hypothesis, no tqdm).
# Wheels land in .whl/ (git-ignored), for Python 3.12 on x86-64 Linux.
# On that machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(
  nbval==0.11.0 nbformat==5.11.1 nbclient==0.11.0 ipykernel==7.4.0 jupyter_client==8.10.0
  jupyter_core==5.9.1 ipython==9.18.1 ipython_pygments_lexers==1.1.1 traitlets==5.16.1 comm==0.2.3
  debugpy==1.8.22 matplotlib-inline==0.2.2 nest-asyncio2==1.7.4 pyzmq==27.3.0 tornado==6.6.1
  platformdirs==4.14.7 jedi==0.20.1 parso==0.8.7 prompt_toolkit==3.0.53 wcwidth==0.9.4 pexpect==4.9.0
  ptyprocess==0.7.0 stack-data==0.6.3 executing==2.3.0 asttokens==3.0.2 pure_eval==0.2.4
  fastjsonschema==2.22.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1 ipywidgets==8.1.9 widgetsnbextension==4.0.16 jupyterlab_widgets==3.0.17
  decorator==5.2.1 hypothesis==6.170.17 sortedcontainers==2.4.0 tqdm==4.70.1
)
mkdir -p .whl
mkdir -p .git/info; grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
ls .whl | wc -l
