"""The GPU operators on a machine without a GPU: configs, device choice, aliases, import hygiene,
and every piece that runs on the CPU (Annex B rewriting, decode.nvdec's bookkeeping over a
PyAV stand-in for NVDEC, and, where torch or DALI are installed, their CPU paths)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from pydantic import ValidationError

from engine import device, yamlsource
from engine.errors import FramegraphError, GraphConfigError, OperatorError
from engine.frame import Frame
from engine.plan import build_plan
from engine.samples import scene
from engine.testing import plan_from_yaml, run_graph
from operators import gpu_decode
from operators.gpu_decode import AnnexB, NvDecodeConfig, is_annexb, parse_avcc, parse_hvcc
from operators.gpu_preprocess import DaliPreprocess, TorchPreprocess
from operators.infer_torch import TorchInferConfig
from operators.preprocess import PreprocessConfig, preprocess_image
from tests.unit.gpu_helpers import collect, needs

ROOT = Path(__file__).resolve().parents[2]
CENTERFACE = ROOT / "triton_models/centerface/1/centerface.onnx"


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "bad"),
    [
        (NvDecodeConfig, {"gpu": 0}),
        (NvDecodeConfig, {"gpu_id": -1}),
        (NvDecodeConfig, {"pixel_format": "bgr24"}),
        (NvDecodeConfig, {"on_corrupt": "ignore"}),
        (NvDecodeConfig, {"latency": "zero"}),
        (TorchPreprocess.Config, {"size": 640}),
        (TorchPreprocess.Config, {"width": 8}),
        (DaliPreprocess.Config, {"dtype": "int8"}),
        (DaliPreprocess.Config, {"layout": "nchw"}),
        (TorchInferConfig, {"onnx": "x.onnx"}),
        (TorchInferConfig, {"device": "gpu"}),
        (TorchInferConfig, {"max_batch": 0}),
        (TorchInferConfig, {"output_names": []}),
        (TorchInferConfig, {"device": "cpu", "fp16": True}),
    ],
)
def test_bad_gpu_operator_configs_are_rejected(config: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        config.model_validate(bad)


def test_gpu_preprocess_takes_exactly_preprocess_cpu_config() -> None:
    assert TorchPreprocess.Config is PreprocessConfig
    assert DaliPreprocess.Config is PreprocessConfig
    assert NvDecodeConfig().model_dump() == {
        "gpu_id": 0,
        "pixel_format": "rgb24",
        "on_corrupt": "drop",
        "latency": "native",
    }
    assert TorchInferConfig().onnx_path == "triton_models/centerface/1/centerface.onnx"


def gpu_graph(decode: str = "", pre: str = "", infer: str = "", pre_op: str = "preprocess.torch") -> str:
    return f"""\
name: gpu
sources: [{{id: cam0, url: clip.mp4}}]
nodes:
  - {{id: decode, op: decode.nvdec, inputs: [sources], workers: 4, config: {{{decode}}}}}
  - {{id: pre, op: {pre_op}, inputs: [decode], batch: {{max_batch: 32}}, config: {{{pre}}}}}
  - {{id: detect, op: infer.torch, inputs: [pre], batch: {{max_batch: 32}}, config: {{{infer}}}}}
  - {{id: post, op: postprocess.centerface, inputs: [detect]}}
"""


def test_gpu_graph_validates_without_gpu_packages() -> None:
    plan = plan_from_yaml(gpu_graph(infer="fp16: true, device: cuda"))
    assert [n.spec.op for n in plan.nodes][:3] == ["decode.nvdec", "preprocess.torch", "infer.torch"]
    assert plan_from_yaml(gpu_graph(pre_op="preprocess.dali")).nodes[1].spec.op == "preprocess.dali"


def test_gpu_graph_errors_name_the_field() -> None:
    with pytest.raises(GraphConfigError) as info:
        plan_from_yaml(gpu_graph(decode="gpu_id: -2", infer="fp16: true, device: cpu, batch: 4"))
    text = str(info.value)
    assert "nodes.0.config.gpu_id" in text
    assert "nodes.2.config.batch: unknown field" in text
    with pytest.raises(GraphConfigError, match=r"nodes.2.config: fp16 needs device cuda"):
        plan_from_yaml(gpu_graph(infer="fp16: true, device: cpu"))


# --- device choice and aliases -------------------------------------------------------------


def test_choose_device_auto_and_cpu() -> None:
    assert device.choose_device("cpu") == ("cpu", "cpu requested")
    chosen, reason = device.choose_device("auto")
    if device.nvdec_available():
        assert chosen == "cuda"
        assert "CUDA GPU" in reason
    else:
        assert chosen == "cpu"
        assert reason.startswith("auto: ")
        assert "torch" in reason or "PyNvVideoCodec" in reason


def test_choose_device_cuda_without_gpu_is_a_clear_error() -> None:
    if device.nvdec_available():
        assert device.choose_device("cuda")[0] == "cuda"
        return
    with pytest.raises(FramegraphError, match=r"device 'cuda' was requested, but .*(torch|PyNvVideoCodec)"):
        device.choose_device("cuda")


def test_choose_device_names_everything_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_reason", lambda: "torch is not installed")
    monkeypatch.setattr(device, "installed", lambda module: False)
    assert device.choose_device("auto") == (
        "cpu",
        "auto: torch is not installed; PyNvVideoCodec is not installed",
    )
    with pytest.raises(FramegraphError, match="torch is not installed; PyNvVideoCodec is not installed"):
        device.choose_device("cuda")
    with pytest.raises(FramegraphError, match="unknown device 'tpu'"):
        device.choose_device("tpu")


def test_checks_do_not_import_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_import(module: str) -> str | None:
        raise AssertionError(f"{module} imported without a GPU")

    monkeypatch.setattr(device, "cuda_reason", lambda: "torch finds no CUDA GPU")
    monkeypatch.setattr(device, "import_error", no_import)
    assert not device.nvdec_available()
    assert not device.dali_available()
    assert device.choose_device("auto")[0] == "cpu"


def test_resolve_alias_on_cpu_and_passthrough() -> None:
    assert device.resolve_alias("decode", "cpu") == "decode.pyav"
    assert device.resolve_alias("preprocess", "cpu") == "preprocess.cpu"
    assert device.resolve_alias("infer.triton", "cuda") == "infer.triton"
    assert device.resolve_alias("decode.pyav", "cpu") == "decode.pyav"


def test_resolve_alias_prefers_dali_then_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_reason", lambda: None)
    monkeypatch.setattr(device, "dali_reason", lambda: None)
    monkeypatch.setattr(device, "nvdec_reason", lambda: None)
    assert device.resolve_alias("preprocess", "cuda") == "preprocess.dali"
    assert device.resolve_alias("decode", "cuda") == "decode.nvdec"
    monkeypatch.setattr(device, "dali_reason", lambda: "nvidia.dali is not installed")
    assert device.resolve_alias("preprocess", "cuda") == "preprocess.torch"


def test_resolve_alias_without_gpu_names_each_candidate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_reason", lambda: "torch is not installed")
    monkeypatch.setattr(device, "dali_reason", lambda: "torch is not installed")
    monkeypatch.setattr(device, "nvdec_reason", lambda: "torch is not installed")
    with pytest.raises(FramegraphError) as info:
        device.resolve_alias("preprocess", "cuda")
    assert str(info.value) == (
        "no cuda implementation of 'preprocess' can run here: preprocess.dali: torch is not installed; "
        "preprocess.torch: torch is not installed"
    )
    with pytest.raises(FramegraphError, match=r"decode.nvdec: torch is not installed"):
        device.resolve_alias("decode", "cuda")
    with pytest.raises(FramegraphError, match="unknown device 'gpu'"):
        device.resolve_alias("decode", "gpu")


def test_resolve_alias_auto_follows_choose_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "choose_device", lambda requested: ("cpu", "auto: no GPU"))
    assert device.resolve_alias("preprocess", "auto") == "preprocess.cpu"


def test_a_batched_preprocess_alias_written_for_a_gpu_validates_on_a_cpu_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`op: preprocess` with `batch:` (the GPU operators batch) must not fail where it resolves
    to preprocess.cpu, which does not: the batch is ignored there; named ops are still checked."""
    monkeypatch.setattr(device, "choose_device", lambda requested: ("cpu", "auto: no GPU"))
    text = (
        "name: g\ndevice: auto\nsources: [{id: cam0, url: clip.mp4}]\nnodes:\n"
        "  - {id: decode, op: decode, inputs: [sources]}\n"
        "  - {id: pre, op: preprocess, inputs: [decode], batch: {max_batch: 8}}\n"
    )
    plan = build_plan(yamlsource.load_text(text, "g.yaml"))
    assert [n.op for n in plan.nodes] == ["decode.pyav", "preprocess.cpu"]
    with pytest.raises(GraphConfigError, match=r"operator 'preprocess\.cpu' does not batch"):
        build_plan(yamlsource.load_text(text.replace("op: preprocess,", "op: preprocess.cpu,"), "g.yaml"))


def test_importing_gpu_operators_imports_no_gpu_library() -> None:
    code = (
        "import sys\n"
        "import engine.cli, engine.device, operators.gpu_decode, operators.gpu_preprocess, "
        "operators.infer_torch\n"
        "from engine.registry import resolve\n"
        "for name in ('decode.nvdec', 'preprocess.torch', 'preprocess.dali', 'infer.torch'):\n"
        "    resolve(name)\n"
        "heavy = [m for m in ('torch', 'PyNvVideoCodec', 'nvidia.dali', 'onnx', 'onnx2torch') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- Annex B -------------------------------------------------------------------------------


def encode(
    path: Path, codec: str, width: int = 320, height: int = 240, frames: int = 40, gop: int = 15
) -> Path:
    """A small MP4 of the moving photo in `codec` (libx264, libx265), no B-frames."""
    import cv2

    from engine.samples import photo_cached

    backdrop = cv2.GaussianBlur(cv2.resize(photo_cached(), (width, height)), (0, 0), 6)
    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream(codec, rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": f"keyint={gop}:min-keyint={gop}:bframes=0:log-level=error"}
        else:
            stream.options = {"g": str(gop), "bf": "0", "preset": "veryfast"}
        for i in range(frames):
            image = scene(width, height, i, 30.0, backdrop)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def decode_annexb(path: Path) -> tuple[list[np.ndarray], AnnexB]:
    """Rewrite every packet as Annex B and decode it with a decoder that gets no extradata."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        rewriter = AnnexB(codec, bytes(stream.codec_context.extradata or b""))
        ctx: Any = av.CodecContext.create(codec, "r")
        frames = []
        for packet in container.demux(stream):
            if not packet.size:
                continue
            data = rewriter.convert(bytes(packet), packet.is_keyframe)
            assert is_annexb(data)
            frames += [f.to_ndarray(format="rgb24") for f in ctx.decode(av.Packet(data))]
        frames += [f.to_ndarray(format="rgb24") for f in ctx.decode(None)]
    return frames, rewriter


def test_mp4_h264_rewritten_to_annexb_decodes_to_the_same_pictures(small_h264: Path) -> None:
    frames, rewriter = decode_annexb(small_h264)
    assert rewriter.length_size == 4
    assert rewriter.parameter_sets.count(b"\x00\x00\x00\x01") == 2  # SPS + PPS
    expected = decode_all(small_h264)
    assert len(frames) == len(expected) == 60
    for got, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_mp4_hevc_rewritten_to_annexb_decodes_to_the_same_pictures(tmp_path: Path) -> None:
    if "libx265" not in av.codecs_available:
        pytest.skip("PyAV has no libx265 encoder")
    clip = encode(tmp_path / "small_hevc.mp4", "libx265")
    frames, rewriter = decode_annexb(clip)
    assert rewriter.parameter_sets.count(b"\x00\x00\x00\x01") >= 3  # VPS + SPS + PPS
    expected = decode_all(clip)
    assert len(frames) == len(expected) == 40
    for got, want in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_annexb_input_passes_through_with_parameter_sets_on_keyframes() -> None:
    sps_pps = b"\x00\x00\x00\x01\x67\x42\x00\x1e\x00\x00\x00\x01\x68\xce\x3c\x80"
    rewriter = AnnexB("h264", sps_pps)
    idr = b"\x00\x00\x00\x01\x65\x88\x84"
    assert rewriter.convert(idr, keyframe=True) == sps_pps + idr
    assert rewriter.convert(idr, keyframe=False) == idr
    assert AnnexB("av1", b"\x81\x00\x0c\x00").convert(b"\x12\x00", keyframe=True) == b"\x12\x00"
    assert AnnexB("h264", None).convert(idr, keyframe=True) == idr


def test_malformed_extradata_and_packets_raise_value_error() -> None:
    with pytest.raises(ValueError, match="truncated"):
        parse_avcc(b"\x01\x42\x00\x1e\xff\xe1\x00\x20\x67")
    with pytest.raises(ValueError, match="not an hvcC"):
        parse_hvcc(b"\x01\x02")
    rewriter = AnnexB("h264", b"\x01\x42\x00\x1e\xff\xe1\x00\x02\x67\x42\x01\x00\x02\x68\xce")
    assert rewriter.length_size == 4
    assert rewriter.convert(b"\x00\x00\x00\x02\x65\x88", keyframe=False) == b"\x00\x00\x00\x01\x65\x88"
    with pytest.raises(ValueError, match="runs past the packet"):
        rewriter.convert(b"\x00\x00\x00\x09\x65\x88", keyframe=False)
    with pytest.raises(ValueError, match="truncated NAL length"):
        rewriter.convert(b"\x00\x00\x00\x02\x65\x88\x00", keyframe=False)


# --- decode.nvdec's bookkeeping, with PyAV standing in for NVDEC ---------------------------


class PyAVSession:
    """Decodes what NVDEC would get (Annex B, no extradata) with FFmpeg; fails where told."""

    def __init__(self, codec: str, fail_keys: set[int]) -> None:
        self.ctx: Any = av.CodecContext.create(codec, "r")
        self.fail_keys = fail_keys

    def decode(self, payload: bytes, key: int) -> list[tuple[int | None, Any]]:
        if key in self.fail_keys:
            raise RuntimeError(f"cuvidParseVideoData failed for {key}")
        packet = av.Packet(payload)
        packet.pts = key
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in self.ctx.decode(packet)]

    def flush(self) -> list[tuple[int | None, Any]]:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in self.ctx.decode(None)]


class PyAVBackend:
    def __init__(self, fail_keys: set[int] | None = None) -> None:
        self.fail_keys = fail_keys or set()
        self.opened = 0

    def open(self, codec: str) -> PyAVSession:
        self.opened += 1
        return PyAVSession(codec, self.fail_keys)


def decode_graph(clip: Path, op: str, config: str = "", source: str = "") -> str:
    return f"""\
name: nvdec_test
sources:
  - {{id: cam0, url: "{clip}"{source}}}
  - {{id: cam1, url: "{clip}"{source}}}
nodes:
  - {{id: decode, op: {op}, inputs: [sources], workers: 2, config: {{{config}}}}}
  - {{id: out, op: test.collect, inputs: [decode], queue: {{size: 1000}}}}
"""


async def test_nvdec_frames_match_decode_pyav(small_h264: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = PyAVBackend()
    monkeypatch.setattr(gpu_decode, "load_backend", lambda config: backend)
    got, summary = await collect(decode_graph(small_h264, "decode.nvdec"))
    want, _ = await collect(decode_graph(small_h264, "decode.pyav"))
    assert backend.opened == 2
    for sid in ("cam0", "cam1"):
        assert len(got[sid]) == len(want[sid]) == 60
        for g, w in zip(got[sid], want[sid], strict=True):
            assert (g.seq, g.pts, g.pixel_format) == (w.seq, w.pts, w.pixel_format)
            assert g.capture_ns > 0
            np.testing.assert_array_equal(g.image, w.image)
    assert summary["nodes"]["decode"]["dropped"] == 0


async def test_nvdec_reset_on_loop_starts_a_new_decoder_and_keeps_numbering(
    small_h264: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = PyAVBackend()
    monkeypatch.setattr(gpu_decode, "load_backend", lambda config: backend)
    got, _ = await collect(
        decode_graph(small_h264, "decode.nvdec", source=", config: {loop: true}"), max_frames=150
    )
    assert backend.opened == 2 * 3  # start + two loops per stream
    for sid in ("cam0", "cam1"):
        assert [f.seq for f in got[sid]] == list(range(150))
        assert [f.pts for f in got[sid]][58:62] == [f.pts for f in got[sid]][118:122]


@pytest.mark.parametrize("on_corrupt", ["drop", "keep"])
async def test_undecodable_packet_is_counted_and_frames_until_the_keyframe_are_suspect(
    small_h264: Path, monkeypatch: pytest.MonkeyPatch, on_corrupt: str
) -> None:
    backend = PyAVBackend(fail_keys={5})  # packet 5 of 60; the next keyframe is packet 31 (gop 30)
    monkeypatch.setattr(gpu_decode, "load_backend", lambda config: backend)
    got, summary = await collect(decode_graph(small_h264, "decode.nvdec", f"on_corrupt: {on_corrupt}"))
    node = summary["nodes"]["decode"]
    for sid in ("cam0", "cam1"):
        assert node["dropped_by_stream"][sid]["corrupt_packet"] == 1
        suspect = [f for f in got[sid] if "corrupt" in f.degraded]
        if on_corrupt == "drop":
            assert node["dropped_by_stream"][sid]["corrupt_frame"] == 25  # packets 6..30
            assert len(got[sid]) == 60 - 1 - 25
            assert not suspect
        else:
            assert len(got[sid]) == 59
            assert len(suspect) == 25
            assert [f.seq for f in got[sid]] == list(range(59))
    if on_corrupt == "keep":
        assert node["events"]["corrupt_frames_kept"] == 50


async def test_a_wedged_decoder_is_replaced(small_h264: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = PyAVBackend(fail_keys=set(range(3, 3 + gpu_decode.MAX_ERRORS_IN_ROW)))
    monkeypatch.setattr(gpu_decode, "load_backend", lambda config: backend)
    got, summary = await collect(decode_graph(small_h264, "decode.nvdec"))
    assert backend.opened == 4  # two streams, each replaced once
    for sid in ("cam0", "cam1"):
        # packets 3..10 fail; the new decoder skips 11..30 and starts at the keyframe, packet 31
        drops = summary["nodes"]["decode"]["dropped_by_stream"][sid]
        assert drops == {"corrupt_packet": 8, "awaiting_keyframe": 20}
        assert len(got[sid]) == 2 + 30
        assert [f.seq for f in got[sid]] == list(range(32))


async def test_the_first_decode_failure_of_a_kind_is_a_warning(
    small_h264: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A CUDA error looks like a corrupt packet from here: the first of each kind is not hidden."""
    backend = PyAVBackend(fail_keys={5, 40})
    monkeypatch.setattr(gpu_decode, "load_backend", lambda config: backend)
    with caplog.at_level("DEBUG", logger=gpu_decode.log.name):
        await collect(decode_graph(small_h264, "decode.nvdec"))
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "decode failed" in r.getMessage()]
    assert sorted(r.getMessage().split(":")[0] for r in warned) == ["cam0", "cam1"]  # once per stream
    assert "RuntimeError: cuvidParseVideoData failed for 5" in warned[0].getMessage()


async def test_a_set_up_error_in_the_decoder_is_a_node_error_not_a_corrupt_packet(
    small_h264: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NotRgbSession(PyAVSession):
        def decode(self, payload: bytes, key: int) -> list[tuple[int | None, Any]]:
            raise OperatorError("decode.nvdec: the decoder returned a (1080, 1920) surface, not RGB")

    class NotRgbBackend(PyAVBackend):
        def open(self, codec: str) -> PyAVSession:
            self.opened += 1
            return NotRgbSession(codec, set())

    backend = NotRgbBackend()
    monkeypatch.setattr(gpu_decode, "load_backend", lambda config: backend)
    _, summary = await collect(decode_graph(small_h264, "decode.nvdec"))
    node = summary["nodes"]["decode"]
    assert node["errors"] > 0
    assert "corrupt_packet" not in node["dropped_by_reason"]
    assert backend.opened == 2  # not replaced as a wedged decoder: replacing it cannot help


def test_the_primary_context_is_synchronised_once_not_per_new_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A looping file or a reconnecting camera opens a new session: no device-wide sync for it."""
    import ctypes
    import types

    calls: list[str] = []
    cuda = types.SimpleNamespace(
        set_device=lambda gpu: calls.append(f"set_device {gpu}"),
        synchronize=lambda gpu: calls.append(f"synchronize {gpu}"),
    )
    fake_torch = types.SimpleNamespace(cuda=cuda)

    class FakeLibCuda:
        def cuCtxGetCurrent(self, ref: Any) -> int:
            ref._obj.value = 0xC0FFEE
            return 0

    monkeypatch.setattr(gpu_decode, "_PRIMARY_CONTEXTS", {})
    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibCuda())
    handles = [gpu_decode.primary_context(fake_torch, 0) for _ in range(3)]
    assert handles == [0xC0FFEE] * 3
    assert calls.count("synchronize 0") == 1
    assert calls.count("set_device 0") == 3  # still made current on every decoder's thread


async def test_nvdec_setup_without_gpu_names_what_is_missing(small_h264: Path) -> None:
    if device.nvdec_available():
        pytest.skip("this machine can decode on NVDEC")
    with pytest.raises(FramegraphError, match=r"decode.nvdec cannot run: .*use decode.pyav"):
        await run_graph(decode_graph(small_h264, "decode.nvdec"))


async def test_unsupported_codec_ends_with_a_clear_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clip = tmp_path / "mpeg4.mp4"
    encode(clip, "mpeg4", frames=5)
    monkeypatch.setattr(gpu_decode, "load_backend", lambda config: PyAVBackend())
    got, summary = await collect(decode_graph(clip, "decode.nvdec"))
    assert not got
    assert summary["nodes"]["decode"]["dropped_by_reason"] == {"no_stream_start": 10}
    assert "NVDEC here takes h264, hevc, av1 (use decode.pyav for this stream)" in caplog.text


# --- CPU paths of the torch and DALI operators (skipped where the package is missing) ---------


def reference_frames(clip: Path, n: int) -> list[np.ndarray]:
    return decode_all(clip)[:n]


PRE_CONFIGS = [
    {},
    {
        "width": 640,
        "height": 640,
        "pad_value": 114,
        "channels": "bgr",
        "scale": 1 / 255,
        "mean": (0.4, 0.5, 0.6),
    },
    {"width": 333, "height": 200, "dtype": "uint8", "layout": "hwc"},
    {"width": 160, "height": 160, "mode": "resize", "dtype": "float16", "std": (2.0, 3.0, 4.0)},
    {"width": 960, "height": 720},  # upscaling
]


def assert_close_to_cpu(frames: list[Frame], images: list[np.ndarray], cfg: PreprocessConfig) -> None:
    """Tensors equal preprocess.cpu's within 2 levels of 0..255, with the same letterbox."""
    unit = 1.0 if cfg.dtype == "uint8" else cfg.scale / min(cfg.std)
    for frame, image in zip(frames, images, strict=True):
        want, geo = preprocess_image(image, "rgb24", cfg)
        got = frame.tensor
        got = got.cpu().numpy() if hasattr(got, "cpu") else np.asarray(got)
        assert got.shape == want.shape
        assert got.dtype == want.dtype
        diff = np.abs(got.astype(np.float32) - want.astype(np.float32)).max() / unit
        assert diff < 2.0, diff
        assert frame.letterbox == geo


async def run_preprocess(op: str, clip: Path, config: dict[str, Any], n: int = 6) -> list[Frame]:
    cfg = ", ".join(f"{k}: {list(v) if isinstance(v, tuple) else v}" for k, v in config.items())
    graph = f"""\
name: pre_test
sources: [{{id: cam0, url: "{clip}"}}]
nodes:
  - {{id: decode, op: decode.pyav, inputs: [sources]}}
  - {{id: pre, op: {op}, inputs: [decode], batch: {{max_batch: 4, max_delay_ms: 50}}, config: {{{cfg}}}}}
  - {{id: out, op: test.collect, inputs: [pre], queue: {{size: 100}}}}
"""
    by_stream, _ = await collect(graph, max_frames=n)
    return by_stream["cam0"]


@needs("torch")
@pytest.mark.parametrize("config", PRE_CONFIGS)
async def test_preprocess_torch_equals_preprocess_cpu(small_h264: Path, config: dict[str, Any]) -> None:
    frames = await run_preprocess("preprocess.torch", small_h264, config)
    assert_close_to_cpu(frames, reference_frames(small_h264, 6), PreprocessConfig.model_validate(config))


@needs("nvidia.dali")
@pytest.mark.parametrize("config", PRE_CONFIGS)
async def test_preprocess_dali_equals_preprocess_cpu(small_h264: Path, config: dict[str, Any]) -> None:
    frames = await run_preprocess("preprocess.dali", small_h264, config)
    assert_close_to_cpu(frames, reference_frames(small_h264, 6), PreprocessConfig.model_validate(config))


async def test_preprocess_dali_without_dali_suggests_torch(small_h264: Path) -> None:
    if device.installed("nvidia.dali"):
        pytest.skip("DALI is installed")
    with pytest.raises(FramegraphError, match=r"preprocess.dali needs NVIDIA DALI: .*preprocess.torch"):
        await run_preprocess("preprocess.dali", small_h264, {})
