#!/usr/bin/env bash
# The GPU check, in one shot on the GPU machine (no network): install the carried wheels, print
# versions, run the GPU and unit tests, run the GPU benchmark, leave logs and JSON in OUT_DIR.
#
#   bash loadtests/gpu_check.sh WHEELS_DIR OUT_DIR
#
# WHEELS_DIR: the assembled wheels (loadtests/gpu_wheels.sh assemble), optionally with
#   astronaut.png (python loadtests/gpu_bench.py --export-photo WHEELS_DIR/astronaut.png, made
#   where scikit-image is: the GPU image lacks it, and the test clips are made from that photo).
# triton_models/centerface/1/centerface.onnx must be in the checkout (carried; no download here).
# Wheels go to /tmp/fg-site (PYTHONPATH), skipping what the image already has at the same or a
# newer version; grpcio/protobuf only if tritonclient.grpc does not import with the image's.
# Always exits 0 once OUT_DIR exists: OUT_DIR/summary.txt says what passed. Finishes in < 8 min.
# Environment: FG_INFER ("torch triton": a benchmark per detection path, in that order),
# FG_STREAMS (64,96,32: the goal's 64 first, so it is measured whatever the time left),
# FG_SECONDS (15), FG_CEILING_SECONDS (5; measured by the first benchmark only), FG_BENCH_ARGS.
set -uo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 WHEELS_DIR OUT_DIR" >&2
  exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="$(cd "$1" 2>/dev/null && pwd || echo "$1")"
mkdir -p "$2"
OUT="$(cd "$2" && pwd)"
PY="${PYTHON:-python3}"
SITE="${FG_SITE:-/tmp/fg-site}"
START=$(date +%s)
DEADLINE=$((START + ${FG_CHECK_BUDGET_S:-465}))
exec > >(tee -a "$OUT/check.log") 2>&1
cd "$REPO" || exit 0

step() { echo; echo "=== [$(($(date +%s) - START)) s] $*"; }
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }
: >"$OUT/summary.txt"

step "install wheels from $WHEELS into $SITE"
mkdir -p "$SITE"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
shopt -s nullglob
WHLS=("$WHEELS"/*.whl)
shopt -u nullglob
# name version of each wheel that is not already importable at that version or newer
"$PY" - "${WHLS[@]}" >"$OUT/wheels_to_install.txt" <<'PY'
import importlib.metadata as md
import os
import sys

try:
    from packaging.version import Version
except ImportError:  # compare as strings: only equal versions count as present
    Version = str  # type: ignore[assignment,misc]
for path in sys.argv[1:]:
    name, version = os.path.basename(path).split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is not None and (have == version or (Version is not str and Version(have) >= Version(version))):
        print(f"skip {name} {version} (have {have})", file=sys.stderr)
        continue
    print(path)
PY
INSTALL=()
DEFERRED=()
while read -r whl; do
  case "$(basename "$whl" | tr '[:upper:]' '[:lower:]')" in
    grpcio-*|protobuf-*) DEFERRED+=("$whl") ;;
    *) INSTALL+=("$whl") ;;
  esac
done <"$OUT/wheels_to_install.txt"
if [[ ${#INSTALL[@]} -gt 0 ]]; then
  echo "installing ${#INSTALL[@]} wheels: $(for w in "${INSTALL[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${INSTALL[@]}" \
    || summary "WARN: pip install failed (exit $?)"
fi
if ! "$PY" -c "import tritonclient.grpc" 2>/dev/null && [[ ${#DEFERRED[@]} -gt 0 ]]; then
  echo "tritonclient.grpc does not import with the image's grpcio/protobuf: installing ${DEFERRED[*]##*/}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${DEFERRED[@]}" \
    || summary "WARN: grpcio/protobuf install failed"
fi

step "versions"
"$PY" - <<'PY' | tee "$OUT/versions.txt"
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "torchvision", "PyNvVideoCodec", "nvidia.dali", "av", "onnx", "onnx2torch", "onnxruntime",
             "numpy", "cv2", "pydantic", "tritonclient", "cuda.bindings.runtime", "pytest", "pytest_asyncio",
             "skimage"):
    try:
        module = importlib.import_module(name)
        print(f"{name:16s} {getattr(module, '__version__', '?')}")
    except Exception as e:
        print(f"{name:16s} unavailable ({type(e).__name__}: {str(e)[:160]})")
try:
    import torch
    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch cuda check failed:", e)
from engine import device
print("choose_device(auto):", device.choose_device("auto"))
for alias in ("decode", "preprocess"):
    try:
        print(f"resolve_alias({alias}, cuda):", device.resolve_alias(alias, "cuda"))
    except Exception as e:
        print(f"resolve_alias({alias}, cuda) failed: {e}")
PY
nvidia-smi -L 2>&1 | tee -a "$OUT/versions.txt"

step "models"
ONNX="$REPO/triton_models/centerface/1/centerface.onnx"
if [[ -f "$ONNX" ]]; then
  # verify the carried file's pinned hash only; setup_models.py would download, and there is no network
  "$PY" scripts/setup_models.py --check --model centerface || summary "WARN: centerface.onnx hash differs from the pin"
else
  summary "WARN: $ONNX missing: the detection tests skip and the graph benchmark fails"
fi

step "test media"
if [[ -z "${FG_PHOTO:-}" ]]; then
  for candidate in "$WHEELS/astronaut.png" "$REPO/out/astronaut.png"; do
    [[ -f "$candidate" ]] && export FG_PHOTO="$candidate" && break
  done
fi
if "$PY" -c "import skimage" 2>/dev/null; then
  echo "scikit-image present: clips from its photo"
elif [[ -n "${FG_PHOTO:-}" ]]; then
  echo "clips from FG_PHOTO=$FG_PHOTO"
else
  summary "WARN: no scikit-image and no astronaut.png: tests that make clips will error"
fi

step "Triton: scripts/triton with this Python, GPU configs, TorchScript CenterFace (timeout 150 s)"
# No network here: the image's Python serves as it is (pytriton from the carried wheel on
# PYTHONPATH), model files are not downloaded (textdet is left out), centerface_torch's
# TorchScript file is made here from the carried ONNX file (onnx2torch), and the models that
# have configs/gpu.pbtxt run on the GPU.
export FG_TRITON_PYTHON_AS_IS=1 FG_TRITON_OFFLINE=1 FG_TRITON_CONFIG=gpu FG_TRITON_NAME=gpu-check
FG_TRITON_PYTHON="$(command -v "$PY")"
export FG_TRITON_PYTHON FG_EXPORT_PYTHON="$FG_TRITON_PYTHON"
export FG_TRITON_HTTP_PORT=18000 FG_TRITON_GRPC_PORT=18001
# Triton moves GPU tensors to and from the Python backend through its CUDA memory pool (64 MB by
# default); a batch of 32 CenterFace inputs is 94 MB, and past the pool it falls back to a slower
# path: 1 GiB keeps the CUDA shared-memory path what the bench measures.
export FG_TRITON_EXTRA_ARGS="${FG_TRITON_EXTRA_ARGS:---cuda-memory-pool-byte-size=0:1073741824}"
T0=$(date +%s)
if timeout -k 5 150 scripts/triton start >"$OUT/triton_start.log" 2>&1; then
  export FG_TRITON_GRPC_URL="127.0.0.1:$FG_TRITON_GRPC_PORT"
  summary "triton: ready in $(($(date +%s) - T0)) s; $(grep -E 'loading|not loading' "$OUT/triton_start.log" | tr '\n' ' ')"
else
  summary "WARN: triton did not start ($(($(date +%s) - T0)) s): $(tail -n 3 "$OUT/triton_start.log" | tr '\n' ' ' | cut -c1-600)"
fi

step "pytest tests/gpu tests/unit (timeout 150 s)"
T0=$(date +%s)
timeout -k 5 150 "$PY" -m pytest tests/gpu tests/unit -q -p no:cacheprovider -rs \
  -W default::DeprecationWarning -W default::UserWarning -W default::FutureWarning \
  --junitxml="$OUT/pytest.xml" 2>&1 | tee "$OUT/pytest.log"
RC=${PIPESTATUS[0]}
summary "pytest: exit $RC in $(($(date +%s) - T0)) s: $(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -1)"

# one benchmark per detection path: infer.torch in process, then infer.triton (centerface_torch
# on the server above, batches in CUDA shared memory); each gets its share of the time left
read -r -a MODES <<<"${FG_INFER:-torch triton}"
for i in "${!MODES[@]}"; do
  MODE="${MODES[$i]}"
  LEFT=$((DEADLINE - $(date +%s)))
  SHARE=$((LEFT / (${#MODES[@]} - i)))
  BENCH_T=$((SHARE < 330 ? SHARE : 330))
  step "gpu_bench --infer $MODE (timeout $BENCH_T s)"
  if [[ "$MODE" == triton && -z "${FG_TRITON_GRPC_URL:-}" ]]; then
    summary "gpu_bench --infer triton: skipped, no Triton"
  elif [[ $BENCH_T -ge 60 ]]; then
    T0=$(date +%s)
    mkdir -p "$OUT/bench-$MODE"
    # the decode ceiling is measured once, by the first benchmark; the next ones reuse it
    FIRST="$OUT/bench-${MODES[0]}/gpu_bench.json"
    CEILING=()
    [[ $i -gt 0 && -f "$FIRST" ]] && CEILING=(--ceiling-from "$FIRST")
    timeout -k 10 "$BENCH_T" "$PY" loadtests/gpu_bench.py --out "$OUT/bench-$MODE" --infer "$MODE" \
      --streams "${FG_STREAMS:-64,96,32}" --seconds "${FG_SECONDS:-15}" --budget-s $((BENCH_T - 15)) \
      --ceiling-seconds "${FG_CEILING_SECONDS:-5}" "${CEILING[@]}" ${FG_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench-$MODE.log"
    RC=${PIPESTATUS[0]}
    summary "gpu_bench --infer $MODE: exit $RC in $(($(date +%s) - T0)) s; figures in bench-$MODE/gpu_bench.json"
  else
    summary "gpu_bench --infer $MODE: skipped, only $LEFT s left"
  fi
done

if [[ -n "${FG_TRITON_GRPC_URL:-}" ]]; then
  timeout -k 5 40 scripts/triton stop >>"$OUT/triton_start.log" 2>&1
fi
cp -f "$REPO/.services/gpu-check.log" "$OUT/triton_server.log" 2>/dev/null
if grep -q "Failed to allocate memory from CUDA memory pool" "$OUT/triton_server.log" 2>/dev/null; then
  summary "WARN: Triton's CUDA memory pool overflowed (a slower path): raise --cuda-memory-pool-byte-size"
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step "figures (loadtests/bench_digest.py)"
"$PY" loadtests/bench_digest.py "$OUT"/bench-*/gpu_bench.json 2>&1 | tee -a "$OUT/summary.txt"
summary "total: $(($(date +%s) - START)) s"
exit 0
