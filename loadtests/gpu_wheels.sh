#!/usr/bin/env bash
# Wheels for the GPU machine (Python 3.12, manylinux x86_64, no network).
#
#   loadtests/gpu_wheels.sh [download]  (here, with network) pip-download the pinned set into
#                                       .wheels/gpu/, split it into carry-sized pieces and print
#                                       the plan: which paths to `carry` in which device call.
#   loadtests/gpu_wheels.sh plan        re-print the plan (.wheels/PLAN.txt).
#   loadtests/gpu_wheels.sh stash [DIR] (on the device, in every call) copy the pieces this call
#                                       carried into DIR (default /tmp/fg-wheels, outside the repo,
#                                       kept while the machine stays warm) and say what is missing.
#   loadtests/gpu_wheels.sh assemble [DIR]  (on the device, last call) stash, join the chunks,
#                                       check every wheel's sha256; exit 1 if any is missing.
#   Then: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DIR/*.whl
#
# Not downloaded, because the GPU image already has them: torch, torchvision, numpy, onnx,
# onnxruntime, opencv-python-headless, pytest, six, wheel, packaging, urllib3, ml-dtypes,
# and probably cuda-bindings (tritonclient.utils.cuda_shared_memory imports
# cuda.bindings.driver/runtime); it is carried anyway (8.4 MB; gpu_check skips it where the image
# has it): WITH_CUDA_BINDINGS=0 leaves it out.
# DALI (nvidia-dali-cuda130, 199 MB: 4 more device calls) only with WITH_DALI=1: the benchmark does
# not use it, its tests skip without it, and a machine left idle 30 s between calls loses what
# the earlier calls carried. Without DALI the set is ~150 MB: 3 calls made back to back.
# Also carried (in the last call; the plan says which): the CenterFace ONNX file (gitignored, so
# the device's copy of the tree lacks it) and .wheels/extras/astronaut.png, the photo the test
# clips are made from (the GPU image has no scikit-image).
# grpcio/protobuf ARE downloaded as a fallback: tritonclient 2.73's generated code refuses
# grpcio < 1.81.1 and protobuf < 6.33.5 at import; install them only if the image's are older.
# Not downloaded for DALI: nvidia-nvimgcodec-cu13 and nvidia-libnvcomp-cu13 (its image-decoder
# and compression deps, large; external_source/resize/crop_mirror_normalize ran without them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
W="$ROOT/.wheels"
GPU="$W/gpu"
CHUNK_MIB="${CHUNK_MIB:-60}"   # wheels bigger than this are split into parts of this size
GROUP_MIB="${GROUP_MIB:-55}"   # each .wheels/carryN/ stays below this
CALL_MIB="${CALL_MIB:-60}"     # what one device call may carry (limit 64 MiB incl. the tree)

PKGS=(
  # video decode
  pynvvideocodec==2.2.4
  av==19.0.2
  # Triton client (grpc, grpc.aio, cuda_shared_memory) + server binary
  tritonclient==2.73.0 python-rapidjson==1.25
  grpcio==1.81.1 protobuf==6.33.6
  nvidia-pytriton==0.7.0
  # models
  onnx2torch==1.5.15
  # engine
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 pyyaml==6.0.3 uvloop==0.23.0
  # tests
  pytest-asyncio==1.5.0 pytest-timeout==2.4.0
)
if [[ "${WITH_CUDA_BINDINGS:-1}" == 1 ]]; then
  PKGS+=(cuda-bindings==13.5.0 cuda-pathfinder==1.9.0)
fi
if [[ "${WITH_DALI:-0}" == 1 ]]; then  # DALI and its pure deps (six, packaging, numpy, wheel are in the image)
  PKGS+=(nvidia-dali-cuda130==2.4.0
    astunparse==1.6.3 gast==0.7.0 optree==0.20.0 nvtx==0.2.16 makefun==1.16.0 libcst==1.9.0)
fi
ONNX="triton_models/centerface/1/centerface.onnx"

PIP_FLAGS=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312)
# pip matches manylinux_2_N exactly; the GPU machine's glibc is 2.39 (Ubuntu 24.04).
for p in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 \
         manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PIP_FLAGS+=(--platform "${p}_x86_64")
done
PIP_FLAGS+=(--platform any)

download() {
  mkdir -p "$GPU" "$W/extras"
  local py=python3
  command -v "$py" >/dev/null || py=python
  [[ -x "$ROOT/.venv/bin/python" ]] && py="$ROOT/.venv/bin/python"
  [[ -f "$ROOT/$ONNX" ]] || "$py" "$ROOT/scripts/setup_models.py" --model centerface
  [[ -f "$W/extras/astronaut.png" ]] || "$py" "$ROOT/loadtests/gpu_bench.py" --export-photo "$W/extras/astronaut.png"
  # wheels of packages no longer in the set (DALI from a WITH_DALI=1 download) leave the plan
  local wanted=" " pkg
  for pkg in "${PKGS[@]}"; do wanted+="$(echo "${pkg%%==*}" | tr 'A-Z-' 'a-z_') "; done
  shopt -s nullglob
  for f in "$GPU"/*.whl; do
    local base
    base="$(basename "$f" | cut -d- -f1 | tr 'A-Z-' 'a-z_')"
    [[ "$wanted" == *" $base "* ]] || { echo "drop $(basename "$f") (not in the set)"; rm -f "$f"; }
  done
  shopt -u nullglob
  for pkg in "${PKGS[@]}"; do
    local name="${pkg%%==*}" ver="${pkg##*==}" norm
    norm="$(echo "$name" | tr 'A-Z-' 'a-z_')"
    # keep exactly one version of each package
    shopt -s nullglob nocaseglob
    local have=("$GPU/${norm}-"*.whl)
    shopt -u nocaseglob
    local keep=0 f
    for f in "${have[@]}"; do
      if [[ "$(basename "$f" | tr 'A-Z' 'a-z')" == "${norm}-${ver}-"* ]]; then keep=1; else rm -f "$f"; fi
    done
    shopt -u nullglob
    if [[ $keep == 1 ]]; then echo "have $pkg"; continue; fi
    echo "get  $pkg"
    "$py" -m pip download -q "${PIP_FLAGS[@]}" -d "$GPU" "$pkg" 2>&1 | grep -v "^WARNING: Location" || true
    shopt -s nullglob nocaseglob
    have=("$GPU/${norm}-${ver}-"*.whl)
    shopt -u nullglob nocaseglob
    [[ ${#have[@]} -ge 1 ]] || { echo "FAILED: $pkg" >&2; exit 1; }
  done
}

split_and_plan() {
  rm -rf "$W"/chunks "$W"/carry[0-9]*
  mkdir -p "$W/chunks"
  python3 - "$W" "$CHUNK_MIB" "$GROUP_MIB" "$CALL_MIB" "$ROOT" "$ONNX" <<'PY'
import hashlib, os, shutil, subprocess, sys
W, chunk, group, call = sys.argv[1], *(int(x) * 2**20 for x in sys.argv[2:5])
root, onnx = sys.argv[5], sys.argv[6]
gpu = os.path.join(W, "gpu")
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()
mib = lambda n: f"{n / 2**20:6.2f} MiB"
wheels = sorted((os.path.getsize(os.path.join(gpu, w)), w) for w in os.listdir(gpu) if w.endswith(".whl"))
sums, parts_sums, items = [], [], []  # items: (size, carry path, description)
small = []
for size, w in wheels:
    p = os.path.join(gpu, w)
    sums.append(f"{sha(p)}  {w}")
    if size > chunk:
        subprocess.run(["split", "-d", "-a", "2", "-b", str(chunk), p,
                        os.path.join(W, "chunks", w + ".part")], check=True)
        for part in sorted(x for x in os.listdir(os.path.join(W, "chunks")) if x.startswith(w + ".part")):
            pp = os.path.join(W, "chunks", part)
            parts_sums.append(f"{sha(pp)}  {part}")
            items.append((os.path.getsize(pp), f".wheels/chunks/{part}", part))
    else:
        small.append((size, w))
# first-fit decreasing: small wheels into .wheels/carryN/, each below GROUP_MIB
groups = []
for size, w in sorted(small, reverse=True):
    for g in groups:
        if g[0] + size < group:
            g[0] += size; g[1].append(w); break
    else:
        groups.append([size, [w]])
for i, (size, ws) in enumerate(groups, 1):
    d = os.path.join(W, f"carry{i}")
    os.makedirs(d)
    for w in ws:
        try:
            os.link(os.path.join(gpu, w), os.path.join(d, w))
        except OSError:
            shutil.copy2(os.path.join(gpu, w), os.path.join(d, w))
    items.append((size, f".wheels/carry{i}", f"{len(ws)} wheels: " + ", ".join(x.split("-")[0] for x in ws)))
# the model file and the photo travel in the call that runs gpu_check: the last one
extras = [os.path.join(W, "extras", x) for x in sorted(os.listdir(os.path.join(W, "extras")))]
last = (sum(os.path.getsize(p) for p in [os.path.join(root, onnx), *extras]),
        f"{onnx} .wheels/extras", "the CenterFace model + " + ", ".join(map(os.path.basename, extras)))
# first-fit decreasing: items into device calls of at most CALL_MIB
calls = []
for it in sorted(items + [last], key=lambda t: -t[0]):
    for c in calls:
        if c[0] + it[0] <= call:
            c[0] += it[0]; c[1].append(it); break
    else:
        calls.append([it[0], [it]])
calls.sort(key=lambda c: last in c[1])  # the call with the model file goes last
with open(os.path.join(W, "SHA256SUMS"), "w") as f:
    f.write("\n".join(sums) + "\n")
with open(os.path.join(W, "chunks", "SHA256SUMS"), "w") as f:
    f.write("\n".join(parts_sums) + "\n")
total = sum(s for s, _ in wheels)
out = [f"{len(wheels)} wheels, {total / 1e6:.1f} MB ({mib(total).strip()}) in total; "
       f"{len(calls)} device calls of <= {call // 2**20} MiB each.", "", "wheels:"]
out += [f"  {mib(s)}  {w}" for s, w in sorted(wheels, reverse=True)]
out += ["", "plan (carry also .wheels/SHA256SUMS and .wheels/chunks/SHA256SUMS, a few KB, in every call;"
        " run `bash loadtests/gpu_wheels.sh stash` in each call, `assemble` in the last, then"
        " `bash loadtests/gpu_check.sh /tmp/fg-wheels $OUT`; make the calls back to back: a machine idle"
        " for 30 s is given back, and what earlier calls carried is lost with it):"]
for i, (size, its) in enumerate(calls, 1):
    out.append(f"  call {i} ({mib(size).strip()}): carry " + " ".join(p for _, p, _ in its))
    out += [f"      {mib(s)}  {p}  [{d}]" for s, p, d in its]
out += ["", "sha256 (whole wheels, .wheels/SHA256SUMS):"] + ["  " + s for s in sums]
out += ["", "sha256 (parts, .wheels/chunks/SHA256SUMS):"] + ["  " + s for s in parts_sums]
text = "\n".join(out) + "\n"
open(os.path.join(W, "PLAN.txt"), "w").write(text)
print(text, end="")
PY
}

stash() {
  local dest="${1:-/tmp/fg-wheels}"
  mkdir -p "$dest/parts"
  shopt -s nullglob
  local f
  for f in "$W"/carry[0-9]*/*.whl; do cp -n "$f" "$dest/"; done
  for f in "$W"/chunks/*.part[0-9]*; do cp -n "$f" "$dest/parts/"; done
  for f in "$W"/extras/*; do cp -n "$f" "$dest/"; done  # astronaut.png: gpu_check looks in DIR
  [[ -f "$W/SHA256SUMS" ]] && cp "$W/SHA256SUMS" "$dest/SHA256SUMS"
  [[ -f "$W/chunks/SHA256SUMS" ]] && cp "$W/chunks/SHA256SUMS" "$dest/parts/SHA256SUMS"
  shopt -u nullglob
  local missing=0 sum name
  if [[ -f "$dest/parts/SHA256SUMS" ]]; then
    while read -r sum name; do
      [[ -f "$dest/parts/$name" ]] || { echo "missing part: $name"; missing=$((missing + 1)); }
    done <"$dest/parts/SHA256SUMS"
  fi
  if [[ -f "$dest/SHA256SUMS" ]]; then
    while read -r sum name; do
      [[ -f "$dest/$name" || -n "$(ls "$dest/parts/$name".part* 2>/dev/null)" ]] ||
        { echo "missing wheel: $name"; missing=$((missing + 1)); }
    done <"$dest/SHA256SUMS"
  fi
  echo "stash $dest: $(ls "$dest"/*.whl 2>/dev/null | wc -l) wheels, $(ls "$dest"/parts/*.part* 2>/dev/null | wc -l) parts, $missing missing"
  return 0
}

assemble() {
  local dest="${1:-/tmp/fg-wheels}"
  stash "$dest"
  (cd "$dest/parts" && sha256sum --quiet -c SHA256SUMS) || { echo "part checksum failed" >&2; exit 1; }
  local sum name
  while read -r sum name; do
    [[ -f "$dest/$name" ]] || cat "$dest/parts/$name".part* >"$dest/$name"
  done <"$dest/SHA256SUMS"
  (cd "$dest" && sha256sum --quiet -c SHA256SUMS) || { echo "wheel checksum failed" >&2; exit 1; }
  echo "assembled $(ls "$dest"/*.whl | wc -l) wheels in $dest (all sha256 ok)"
}

case "${1:-download}" in
  download) download; split_and_plan ;;
  plan) cat "$W/PLAN.txt" ;;
  stash) stash "${2:-}" ;;
  assemble) assemble "${2:-}" ;;
  *) echo "usage: $0 [download|plan|stash [DIR]|assemble [DIR]]" >&2; exit 2 ;;
esac
