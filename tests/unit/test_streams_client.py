"""`framegraph streams ls` as a table: aligned columns, '-' for unknowns, errors under their row."""

from __future__ import annotations

from engine.streams_client import streams_table


def test_streams_read_as_a_table_with_errors_under_their_rows() -> None:
    rows = [
        {"id": "cam1", "state": "running", "owner": "w-1", "fps": 29.97, "latency_p95_ms": 88.5,
         "frames_in": 900, "frames_out": 899, "dropped": 1, "reconnects": 0, "url": "rtsp://***@10.0.0.7/live"},
        {"id": "camera-long-name", "state": "reconnecting", "owner": None, "fps": 0.0, "latency_p95_ms": None,
         "frames_in": 0, "frames_out": 0, "dropped": 0, "reconnects": 3, "url": "rtsp://10.0.0.8/x",
         "error": "camera-long-name: cannot open rtsp://10.0.0.8/x: Connection refused"},
    ]  # fmt: skip
    lines = streams_table(rows).splitlines()
    assert lines[0].split() == [
        "ID",
        "STATE",
        "OWNER",
        "FPS",
        "P95",
        "MS",
        "IN",
        "OUT",
        "DROPPED",
        "RECONNECTS",
        "URL",
    ]
    assert lines[1].split() == [
        "cam1",
        "running",
        "w-1",
        "29.97",
        "88.5",
        "900",
        "899",
        "1",
        "0",
        "rtsp://***@10.0.0.7/live",
    ]
    assert lines[2].split()[:5] == ["camera-long-name", "reconnecting", "-", "0", "-"]
    assert lines[3] == "  error: camera-long-name: cannot open rtsp://10.0.0.8/x: Connection refused"
    assert lines[1].index("running") == lines[2].index("reconnecting") == lines[0].index("STATE")  # aligned


def test_no_streams_says_so() -> None:
    assert streams_table([]) == "no streams"
