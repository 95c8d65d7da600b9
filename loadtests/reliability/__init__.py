"""Load, soak and fault tests of framegraph against live RTSP cameras, Triton and a Kafka broker.

    python -m loadtests.reliability throughput|soak|chaos [--short] [--out DIR] [...]

Every run starts its own servers on loopback (an RTSP server serving copies of a generated
clip as cam0..camN-1, a Triton, a Kafka-protocol broker), runs the graph in this process
(engine.runtime.Runtime, streams added with `add_stream`), samples the engine's metrics and
the process's RSS, fds and threads, reads the published events back with a consumer group,
and writes `report.json` and PNG plots to --out. See README.md, "Performance and reliability".
"""
