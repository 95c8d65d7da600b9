#!/usr/bin/python3
"""Local RTSP server for integration tests: loops every H.264 *.mp4 of a directory forever.

Run with Debian's /usr/bin/python3 (python3-gi + GstRtspServer; see scripts/ci_deps.sh).
  rtsp://127.0.0.1:PORT/<stem>  one mount per <stem>.mp4 (dir rescanned every second)
  rtsp://127.0.0.1:PORT/test    live 1280x720@30 test pattern
  rtsp://127.0.0.1:PORT/<name>  with --record-mount NAME: accepts a pushed H.264 stream
                                (ANNOUNCE/RECORD, e.g. sink.rtsp or `ffmpeg -f rtsp`) and
                                writes each session to <media-dir>/<name>-<n>.ts

Why the clip mounts are built this way:
- No re-encoding: the file is only demuxed/parsed, so many mounts cost almost no CPU.
- Looping needs bus control (SEGMENT_DONE -> non-flushing segment seek keeps running time
  continuous), but GstRtspServer owns the media pipeline's bus and seeks it on PLAY. So
  each media gets a private "reader" pipeline (filesrc ! qtdemux ! h264parse ! appsink
  sync=true, i.e. real-time paced) that we loop, feeding a live appsrc in the media.
- The media is live and shared: clients never seek it, late joiners join mid-stream.
  The reader starts when the media first needs data and stops when the last client
  leaves, so every fresh session starts at frame 0 with a keyframe (fast, reproducible).
"""
import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

CLIP_LAUNCH = (
    "( appsrc name=src is-live=true format=time"
    " caps=video/x-h264,stream-format=byte-stream,alignment=au"
    " ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
TEST_LAUNCH = (
    "( videotestsrc is-live=true ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1"
    " ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30"
    " ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
# config-interval=-1: SPS/PPS before every IDR so mid-stream joiners can decode.
READER_LAUNCH = (
    "filesrc name=file ! qtdemux ! h264parse config-interval=-1"
    " ! video/x-h264,stream-format=byte-stream,alignment=au"
    " ! appsink name=sink sync=true emit-signals=true"
)
# RECORD mounts: RTP in, H.264 out to MPEG-TS (readable even when the client vanishes).
RECORD_LAUNCH = (
    "( rtph264depay name=depay0 ! h264parse"
    " ! mpegtsmux ! filesink name=sink sync=false location={path} )"
)
CLOCK = None  # one system clock for reader and media, so timestamps can be translated


def log(*a):
    print("rtsp_server:", *a, flush=True)


class Reader:
    """Loops one mp4 in real time and pushes its access units into one media's appsrc."""

    def __init__(self, path, appsrc):
        self.path, self.appsrc = path, appsrc
        self.pipe = Gst.parse_launch(READER_LAUNCH)
        self.pipe.use_clock(CLOCK)
        self.pipe.get_by_name("file").set_property("location", path)
        self.sink = self.pipe.get_by_name("sink")
        self.sink.connect("new-sample", self.on_sample)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        self.bus_id = bus.connect("message", self.on_message)
        self.caps_set = False
        self.seg_base = 0     # detects the first sample of each new loop
        self.max_end = 0      # end (running time) of the latest frame of the current loop
        self.correction = 0   # accumulated per-loop fix, see on_sample

    def seek(self, flags):
        # SEGMENT flag: end of file posts SEGMENT_DONE (not EOS), so we can loop gaplessly.
        self.pipe.seek(1.0, Gst.Format.TIME, flags | Gst.SeekFlags.SEGMENT,
                       Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1)

    def start(self):
        self.pipe.set_state(Gst.State.PAUSED)
        if self.pipe.get_state(5 * Gst.SECOND)[0] != Gst.StateChangeReturn.SUCCESS:
            log("cannot preroll", self.path)
            self.fail()
            return False
        self.seek(Gst.SeekFlags.FLUSH)
        self.pipe.set_state(Gst.State.PLAYING)
        return False

    def stop(self):
        bus = self.pipe.get_bus()
        bus.disconnect(self.bus_id)
        bus.remove_signal_watch()
        self.pipe.set_state(Gst.State.NULL)

    def fail(self):
        self.pipe.set_state(Gst.State.NULL)
        self.appsrc.emit("end-of-stream")  # clients see the stream end, not a hang

    def on_message(self, _bus, msg):
        if msg.type == Gst.MessageType.SEGMENT_DONE:
            # Non-flushing: the reader's running time (and so its pacing) stays continuous.
            self.seek(Gst.SeekFlags.NONE)
        elif msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            log("reader error", self.path, err.message, dbg)
            self.fail()

    def on_sample(self, sink):
        sample = sink.emit("pull-sample")
        buf, seg = sample.get_buffer(), sample.get_segment()
        if not seg.flags & Gst.SegmentFlags.SEGMENT:
            return Gst.FlowReturn.OK  # prerolled before our first seek: would be sent twice

        def running_time(t):
            if t == Gst.CLOCK_TIME_NONE:
                return None
            sign, rt = seg.to_running_time_full(Gst.Format.TIME, t)
            return rt if sign >= 0 else -rt

        pts, dts = running_time(buf.pts), running_time(buf.dts)
        if seg.base != self.seg_base and pts is not None:
            # New loop. qtdemux bases the new segment on the last PTS rather than the end
            # of the last frame (edit lists/B-frames), so the first frame would collide
            # with the previous one. Shift output and pacing (ts-offset) to close the gap.
            self.seg_base = seg.base
            self.correction += self.max_end - pts
            sink.set_property("ts-offset", self.correction)
        if pts is not None:
            dur = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else 0
            self.max_end = max(self.max_end, pts + dur)
        if not self.caps_set:
            self.appsrc.set_property("caps", sample.get_caps())
            self.caps_set = True
        # reader running time -> absolute clock time -> running time of the media pipeline
        shift = self.pipe.get_base_time() - self.appsrc.get_base_time() + self.correction
        out = buf.copy()  # shares the memory, gets its own timestamps
        out.pts = Gst.CLOCK_TIME_NONE if pts is None else max(0, pts + shift)
        out.dts = Gst.CLOCK_TIME_NONE if dts is None else max(0, dts + shift)
        ret = self.appsrc.emit("push-buffer", out)
        return Gst.FlowReturn.OK if ret == Gst.FlowReturn.OK else Gst.FlowReturn.EOS


def clip_factory(path):
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(CLIP_LAUNCH)
    factory.set_shared(True)

    def on_configure(_factory, media):
        media.set_clock(CLOCK)
        appsrc = media.get_element().get_by_name("src")
        state = {}

        # need-data fires only once the live appsrc is PLAYING, i.e. its base time is valid.
        def on_need_data(src, _length):
            if "reader" not in state:
                state["reader"] = Reader(path, src)
                GLib.idle_add(state["reader"].start)

        def on_unprepared(_media):
            if "reader" in state:
                GLib.idle_add(lambda: state["reader"].stop() and False)

        appsrc.connect("need-data", on_need_data)
        media.connect("unprepared", on_unprepared)

    factory.connect("media-configure", on_configure)
    return factory


def record_factory(media_dir, name):
    """A mount that accepts RECORD and writes what is pushed to <name>-<n>.ts, one file a session."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
    factory.set_shared(False)
    sessions = [0]

    def on_configure(_factory, media):
        path = os.path.join(media_dir, f"{name}-{sessions[0]:03d}.ts")
        sessions[0] += 1
        media.get_element().get_by_name("sink").set_property("location", path)
        log("recording", "/" + name, "->", path)

    factory.set_launch(RECORD_LAUNCH.format(path=os.path.join(media_dir, name + ".ts")))
    factory.connect("media-configure", on_configure)
    return factory


def main():
    global CLOCK
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media-dir", required=True)
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--record-mount", action="append", default=[], metavar="NAME",
                    help="a mount /NAME that accepts pushed streams (RECORD); repeatable")
    args = ap.parse_args()

    Gst.init(None)
    CLOCK = Gst.SystemClock.obtain()
    media_dir = os.path.abspath(args.media_dir)
    os.makedirs(media_dir, exist_ok=True)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    test = GstRtspServer.RTSPMediaFactory()
    test.set_launch(TEST_LAUNCH)
    test.set_shared(True)
    mounts.add_factory("/test", test)
    for name in args.record_mount:
        mounts.add_factory("/" + name, record_factory(media_dir, name))
    served = set(args.record_mount)  # never unmounted by the rescan

    def rescan():
        try:
            stems = {f[:-4] for f in os.listdir(media_dir) if f.endswith(".mp4") and f[:-4] != "test"}
        except OSError:
            stems = set()
        stems |= set(args.record_mount)
        for stem in sorted(stems - served):
            mounts.add_factory("/" + stem, clip_factory(os.path.join(media_dir, stem + ".mp4")))
            log("mounted", "/" + stem)
        for stem in served - stems:
            mounts.remove_factory("/" + stem)
            log("unmounted", "/" + stem)
        served.clear()
        served.update(stems)
        return True

    rescan()
    if server.attach(None) == 0:
        log(f"cannot bind {args.address}:{args.port}")
        return 1
    GLib.timeout_add(1000, rescan)
    # Drop dead sessions so a killed client does not pin a shared media forever.
    GLib.timeout_add_seconds(2, lambda: server.get_session_pool().cleanup() >= 0)

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    print(f"ready rtsp://{args.address}:{args.port} mounts: /test "
          + " ".join("/" + s for s in sorted(served)), flush=True)
    loop.run()
    log("stopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
