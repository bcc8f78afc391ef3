#!/usr/bin/env bash
# One-command, idempotent set-up of the project's virtual environment (called by `make setup`).
#
# Why each step is the way it is:
# - pip runs with the machine's pip config switched off: a config that points at a local
#   `torch+cpu` wheel gets a torch whose ops break torchvision (and so timm).
# - every install uses requirements/pins.txt as constraints, so nothing can swap torch (an
#   unpinned timm or torchvision install would pull the newest torch, whose headers need
#   C++20, which mmcv 2.1.0's build does not accept).
# - mmcv is built once, without build isolation (isolation silently drops the compiled ops),
#   stripped of debug info, and cached under a key holding the torch, mmcv and Python versions:
#   pip's own wheel cache ignores the torch version and would reuse a wheel built for another one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
PINS="$ROOT/requirements/pins.txt"
BUILD_REQS="$ROOT/requirements/build.txt"
CACHE_ROOT="${VIR_DENSE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vir_dense}"
STAMP="$VENV/.vir_dense_setup"
# Optional extras installed too (pins tagged `# extra: NAME` in pins.txt), so the tests cover
# them: deploy = onnx, onnxscript, onnxruntime (ONNX export). VIR_DENSE_EXTRAS="" skips them.
EXTRAS="${VIR_DENSE_EXTRAS-deploy}"

pin_of() { sed -n "s/^$1==\([^ ]*\).*/\1/p" "$PINS"; }
# The requirements of one extra: its tagged pin lines, tag removed.
extra_pins() { sed -n "s/^\([^#]*[^# ]\) *# *extra: *$1 *$/\1/p" "$PINS"; }
TORCH_VERSION="$(pin_of torch)"
MMCV_VERSION="$(pin_of mmcv)"

# The stamp records what the venv was built from; if it matches and the venv still imports,
# there is nothing to do (this is the fast second `make setup`).
want_stamp() {
    { cat "$PINS" "$BUILD_REQS" "$ROOT/setup.py" "$ROOT/tools/misc/setup_env.sh"; echo "extras: $EXTRAS"; } |
        sha256sum | cut -d' ' -f1
}

verify() {
    "$VENV/bin/python" - "$TORCH_VERSION" "$MMCV_VERSION" <<'PY'
import sys
import torch, torchvision, mmcv, mmcv.ops, mmdet, mmseg, timm, pycocotools, vir_dense  # noqa
from mmcv.utils import ext_loader
ext_loader.load_ext('_ext', ['nms'])  # raises if mmcv was installed without compiled ops
want_torch, want_mmcv = sys.argv[1:]
# The index build reports a local tag (+cu130); the machine's +cpu wheel breaks torchvision.
assert torch.__version__.split('+')[0] == want_torch and not torch.__version__.endswith('+cpu'), \
    f'torch {torch.__version__} is not the index build of {want_torch}'
assert mmcv.__version__ == want_mmcv, f'mmcv {mmcv.__version__} != {want_mmcv}'
print(f'vir_dense env ok: torch {torch.__version__}, torchvision {torchvision.__version__}, '
      f'mmcv {mmcv.__version__} (+_ext), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, '
      f'timm {timm.__version__}')
PY
    local extra
    for extra in $EXTRAS; do  # each extra's packages import (distribution name = module name)
        "$VENV/bin/python" -c 'import importlib, sys; [importlib.import_module(n) for n in sys.argv[2:]]
print("extra", sys.argv[1], "ok:", ", ".join(sys.argv[2:]))' \
            "$extra" $(extra_pins "$extra" | sed 's/[=<>!~;[ ].*//') || return 1
    done
}

main() {
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(want_stamp)" ]] && verify 2>/dev/null; then
    return 0
fi

echo "[setup] creating $VENV (first run: ~15 min, most of it building mmcv's ops once)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
rm -f "$STAMP"

# pip, isolated from the machine's config (local torch+cpu wheel folder, extra indexes).
pip_clean() {
    env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        "$VENV/bin/python" -m pip --disable-pip-version-check "$@"
}

pip_clean install -q -c "$PINS" -r "$BUILD_REQS"
pip_clean install -q -c "$PINS" "torch==$TORCH_VERSION" "torchvision==$(pin_of torchvision)"

PY_TAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE_ROOT/wheels/mmcv-$MMCV_VERSION-torch-$TORCH_VERSION-$PY_TAG"
if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    echo "[setup] building mmcv $MMCV_VERSION with CPU ops against torch $TORCH_VERSION (~12 min on 2 cores)"
    BUILD_DIR="$(mktemp -d)"
    trap 'rm -rf "$BUILD_DIR"' EXIT
    # -g0 after the interpreter's -g: no debug info, a faster compile and a small library.
    CFLAGS="${CFLAGS:-} -g0" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        pip_clean wheel --no-deps --no-build-isolation --no-cache-dir \
        -w "$BUILD_DIR/dist" "mmcv==$MMCV_VERSION"
    # The interpreter's CFLAGS carry -g: the raw _ext library is ~83 MB, ~2 MB once stripped.
    "$VENV/bin/python" -m wheel unpack -d "$BUILD_DIR/unpacked" "$BUILD_DIR"/dist/mmcv-*.whl
    find "$BUILD_DIR/unpacked" -name '_ext*.so' -exec strip --strip-debug {} +
    mkdir -p "$BUILD_DIR/stripped"
    "$VENV/bin/python" -m wheel pack -d "$BUILD_DIR/stripped" "$BUILD_DIR"/unpacked/mmcv-*
    mkdir -p "$WHEEL_DIR"
    # Move into place atomically so an interrupted build never leaves a half wheel in the cache.
    for whl in "$BUILD_DIR"/stripped/*.whl; do
        cp "$whl" "$WHEEL_DIR/.tmp.$(basename "$whl")"
        mv "$WHEEL_DIR/.tmp.$(basename "$whl")" "$WHEEL_DIR/$(basename "$whl")"
    done
fi
pip_clean install -q --no-deps "$WHEEL_DIR"/mmcv-*.whl

# Everything else, under the same pins; then this package, editable, without touching deps.
grep -vE '^(#|$|torch==|torchvision==|mmcv==)|# *extra:' "$PINS" > "$VENV/.rest-requirements.txt"
for extra in $EXTRAS; do
    extra_pins "$extra" >> "$VENV/.rest-requirements.txt"
done
pip_clean install -q -c "$PINS" -r "$VENV/.rest-requirements.txt" "mmcv==$MMCV_VERSION" \
    "torch==$TORCH_VERSION"
pip_clean install -q --no-deps --no-build-isolation -e "$ROOT"

verify
want_stamp > "$STAMP"
}

main "$@"
