"""GPU ceilings for loadtests/gpu_bench.py: raw NVDEC decode of N streams, the model alone,
whether low-latency decoding works, and nvidia-smi readings."""

from __future__ import annotations

import contextlib
import gc
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from operators.gpu_decode import CODECS, AnnexB


def smi(args: list[str]) -> str:
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {e}"


def smi_used_mib() -> float | None:
    text = smi(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    try:
        return float(text.splitlines()[0])
    except (ValueError, IndexError):
        return None


# --- (a) the NVDEC ceiling -------------------------------------------------------------------


def _ceiling_worker(clip: Path, seconds: float, start: threading.Barrier, out: list[Any], index: int) -> None:
    import av
    import PyNvVideoCodec as nvc

    try:
        with av.open(str(clip)) as container:
            cc = container.streams.video[0].codec_context
            codec, extradata = cc.name, bytes(cc.extradata or b"")
        rewriter = AnnexB(codec, extradata or None)
        decoder = nvc.CreateDecoder(
            gpuid=0,
            codec=getattr(nvc.cudaVideoCodec, CODECS[codec]),
            cudacontext=0,
            cudastream=0,
            usedevicememory=True,
            outputColorType=nvc.OutputColorType.RGB,
        )
    except Exception as e:
        out[index] = e
        start.abort()
        return
    try:
        start.wait()
    except threading.BrokenBarrierError:
        out[index] = RuntimeError("another decoder failed to start")
        return
    stop_at = time.perf_counter() + seconds
    frames = 0
    try:
        while time.perf_counter() < stop_at:
            with av.open(str(clip)) as container:
                for packet in container.demux(container.streams.video[0]):
                    if not packet.size:
                        continue
                    arr = np.frombuffer(rewriter.convert(bytes(packet), packet.is_keyframe), np.uint8)
                    pd = nvc.PacketData()
                    pd.bsl_data, pd.bsl, pd.pts = arr.ctypes.data, arr.size, packet.pts or 0
                    frames += len(decoder.Decode(pd))
                    if time.perf_counter() >= stop_at:
                        break
        out[index] = frames
    except Exception as e:
        out[index] = e


def decode_ceiling(clip: Path, streams: int, seconds: float) -> dict[str, Any]:
    """Total fps of `streams` threads decoding the clip on their own decoders."""
    out: list[Any] = [None] * streams
    start = threading.Barrier(streams + 1)
    threads = [
        threading.Thread(target=_ceiling_worker, args=(clip, seconds, start, out, i), daemon=True)
        for i in range(streams)
    ]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a worker failed: it says why in `out`
        start.wait(timeout=120)
    began = time.perf_counter()
    for t in threads:
        t.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - began
    errors = [f"{type(e).__name__}: {e}" for e in out if isinstance(e, Exception)]
    frames = [n for n in out if isinstance(n, int)]
    result: dict[str, Any] = {
        "streams": streams,
        "seconds": round(elapsed, 2),
        "frames": sum(frames),
        "fps": round(sum(frames) / seconds, 1) if frames else 0.0,
        "per_stream_fps_min": round(min(frames) / seconds, 1) if frames else 0.0,
    }
    if errors:
        result["errors"] = sorted(set(errors))[:5]
    gc.collect()
    return result


def model_ceiling(seconds: float, batch: int = 32) -> dict[str, Any]:
    """infer.torch's model alone (CenterFace fp16, 3x384x640) in a tight loop, batch `batch`."""
    import torch

    from operators.infer_torch import TorchModel, resolve_model_path

    model = TorchModel(resolve_model_path("triton_models/centerface/1/centerface.onnx"), "cuda", 0, True)
    frames = [torch.zeros((3, 384, 640), device="cuda") for _ in range(batch)]
    model.run(frames, model.output_names)
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        model.run(frames, model.output_names)
        n += batch
    return {"batch": batch, "fps": round(n / (time.monotonic() - t0), 1)}


def probe_low_latency(clip: Path) -> str | None:
    """None if a LOW latency decoder (ENDOFPICTURE packets) decodes the clip's start, else why."""
    import av
    import PyNvVideoCodec as nvc

    try:
        decoder = nvc.CreateDecoder(
            gpuid=0,
            codec=nvc.cudaVideoCodec.H264,
            cudacontext=0,
            cudastream=0,
            usedevicememory=True,
            outputColorType=nvc.OutputColorType.RGB,
            latency=nvc.DisplayDecodeLatencyType.LOW,
        )
        frames = 0
        with av.open(str(clip)) as container:
            cc = container.streams.video[0].codec_context
            rewriter = AnnexB(cc.name, bytes(cc.extradata or b"") or None)
            for i, packet in enumerate(container.demux(container.streams.video[0])):
                if i >= 30:
                    break
                arr = np.frombuffer(rewriter.convert(bytes(packet), packet.is_keyframe), np.uint8)
                pd = nvc.PacketData()
                pd.bsl_data, pd.bsl, pd.pts = arr.ctypes.data, arr.size, i
                pd.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE
                frames += len(decoder.Decode(pd))
        return None if frames >= 29 else f"only {frames} of 30 frames came out without a flush"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
