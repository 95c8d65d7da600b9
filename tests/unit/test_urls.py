"""`redact_url` and `scrub`: no password, token or key of a URL survives, in a URL or in free text.

Every secret in these tables contains "Secret", so each test can check that no part of it is left.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from engine.errors import GraphConfigError, SourceError
from engine.metrics import NodeMetrics
from engine.plan import source_plan
from engine.preflight import _check_source
from engine.registry import SourceContext
from operators.demux import Demuxer
from operators.urls import is_secret_key, redact_url, scrub

# (url, what redact_url must give): each form leaked before
LEAKS = [
    ("rtsp://admin:pa#Secret1@127.0.0.1:9/x", "rtsp://***@127.0.0.1:9/x"),
    ("rtsp://admin:pa/Secret3@127.0.0.1:9/x", "rtsp://***@127.0.0.1:9/x"),
    ("rtsp://admin:pa?Secret@host/x", "rtsp://***@host/x"),
    ("rtsp://user:p@Secret@host/x", "rtsp://***@host/x"),
    ("rtsp://user:Sec:ret/#?@Secret@host:554/x", "rtsp://***@host:554/x"),
    ("rtsp://admin:pa/Secret3@[::1]:8554/x", "rtsp://***@[::1]:8554/x"),
    ("rtsp://127.0.0.1:9/x?user=admin&password=Secret5", "rtsp://127.0.0.1:9/x?user=admin&password=***"),
    ("rtsp://host/x?PASSWORD=Secret5&channel=1", "rtsp://host/x?PASSWORD=***&channel=1"),
    ("rtsp://host/x?user=admin&pass=Secret", "rtsp://host/x?user=admin&pass=***"),
    ("rtsp://host/x?user=admin&pwd=Secret", "rtsp://host/x?user=admin&pwd=***"),
    ("rtsp://host/x?passwd=Secret&subtype=0", "rtsp://host/x?passwd=***&subtype=0"),
    ("http://host/live.m3u8?token=Secret", "http://host/live.m3u8?token=***"),
    ("http://host/x?access_token=Secret", "http://host/x?access_token=***"),
    ("http://host/x?accessToken=Secret", "http://host/x?accessToken=***"),
    ("http://host/x?api_key=Secret&fmt=h264", "http://host/x?api_key=***&fmt=h264"),
    ("http://host/x?apikey=Secret", "http://host/x?apikey=***"),
    ("http://host/x?apiKey=Secret", "http://host/x?apiKey=***"),
    ("http://host/x?secret=Secret", "http://host/x?secret=***"),
    ("http://host/x?client_secret=Secret", "http://host/x?client_secret=***"),
    ("http://host/x?key=Secret", "http://host/x?key=***"),
    ("rtmp://host/live?stream-key=Secret", "rtmp://host/live?stream-key=***"),
    ("http://host/x?auth=Secret", "http://host/x?auth=***"),
    ("https://bucket/clip.mp4?X-Amz-Signature=Secret", "https://bucket/clip.mp4?X-Amz-Signature=***"),
    ("https://host/clip.mp4?sv=2020&sig=Secret", "https://host/clip.mp4?sv=2020&sig=***"),
    ("http://host/cb#access_token=Secret&state=1", "http://host/cb#access_token=***&state=1"),
    ("rtsp://host/x;password=Secret", "rtsp://host/x;password=***"),
    ("rtsp://host/x?password=pa#Secret", "rtsp://host/x?password=***"),
    ("rtsp://host/x?password=pa;Secret", "rtsp://host/x?password=***"),
    ("rtsp://u:Secret@host/x?token=Secret", "rtsp://***@host/x?token=***"),
    ("redis://:Secret@host:6379/0", "redis://***@host:6379/0"),
    ("kafka://svc:Secret@broker:9092", "kafka://***@broker:9092"),
    ("http://Secret@host/x", "http://***@host/x"),
    ("rtsp://u:pa%23Secret%40@host/x", "rtsp://***@host/x"),
]


@pytest.mark.parametrize(("url", "expected"), LEAKS)
def test_redact_url_masks_every_credential(url: str, expected: str) -> None:
    out = redact_url(url)
    assert out == expected
    assert "Secret" not in out


@pytest.mark.parametrize(("url", "expected"), LEAKS)
@pytest.mark.parametrize(
    "template",
    [
        "{}",
        "cam0: cannot open {}: Connection refused",
        "[Errno 111] Connection refused: '{}'",
        'Invalid argument: "{}" returned 22',
        "FAILED source cam0 (source.rtsp, {}): refused",
        "retrying {}, attempt 3",
        "url={} state=failed",
        '{{"url": "{}", "owner": "ops@example.com"}}',
        "<{}>",
    ],
    ids=["bare", "cannot-open", "single-quoted", "double-quoted", "parens", "comma", "kv", "json", "angle"],
)
def test_scrub_masks_every_credential_in_free_text(url: str, expected: str, template: str) -> None:
    out = scrub(template.format(url))
    assert "Secret" not in out
    host_and_path = expected.split("://", 1)[1].split("@")[-1].split("?")[0].split("#")[0].split(";")[0]
    assert host_and_path in out  # a user still sees which camera


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cannot open rtsp://user:p@ss@host/x", "cannot open rtsp://***@host/x"),
        (
            "open 'rtsp://u:p@Secret@host/x': refused by admin@corp",
            "open 'rtsp://***@host/x': refused by admin@corp",
        ),
        ("(rtsp://u:pa/Secret@host/x), then", "(rtsp://***@host/x), then"),
        ("rtsp://u:Secret@host/x: timed out", "rtsp://***@host/x: timed out"),
        ("a rtsp://u:Secret@h1/x, b kafka://k:Secret@h2:9092.", "a rtsp://***@h1/x, b kafka://***@h2:9092."),
        # a password holding the quote that encloses the URL: still masked, up to the last @
        ("open 'rtsp://u:it'sSecret@host/x' failed", "open 'rtsp://***@host/x' failed"),
        ("open 'rtsp://u:it\\'sSecret@host/x' failed", "open 'rtsp://***@host/x' failed"),
        ('{"url":"rtsp://u:Secret@h/x","owner":"a@b"}', '{"url":"rtsp://***@h/x","owner":"a@b"}'),
        ("x (rtsp://h/x?token=Secret5), next", "x (rtsp://h/x?token=***), next"),
        ("'rtsp://h/x?password=Secret5'", "'rtsp://h/x?password=***'"),
        ("rtsp://h/x?password=it'sSecret more", "rtsp://h/x?password=*** more"),
        ("rtsp://h/x?password=Secret),x more", "rtsp://h/x?password=*** more"),
        ("GET /x?user=admin&pwd=Secret HTTP/1.0", "GET /x?user=admin&pwd=*** HTTP/1.0"),
    ],
)
def test_scrub_exact_forms(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://10.0.0.5:554/main", "rtsp://10.0.0.5:554/main"),
        ("rtsp://admin:pw@10.0.0.5:554/main", "rtsp://***@10.0.0.5:554/main"),
        ("rtsp://user@host/x", "rtsp://***@host/x"),  # a user name alone is masked too, as before
        ("rtsp://u:p@[::1]:8554/x", "rtsp://***@[::1]:8554/x"),
        ("rtsp://u:p%40ss@host/x", "rtsp://***@host/x"),
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
        ("http://token@host", "http://***@host"),
        ("//u:p@host/x", "//***@host/x"),
        ("rtsp://u:p@host/x?a=b#c", "rtsp://***@host/x?a=b#c"),
        ("rtsp://host/x?channel=1&subtype=0", "rtsp://host/x?channel=1&subtype=0"),
        ("rtsp://host/x?user=admin&username=admin", "rtsp://host/x?user=admin&username=admin"),
        ("rtsp://host/x?password=", "rtsp://host/x?password="),
        ("http://triton:8000/v2/models", "http://triton:8000/v2/models"),
        ("udp://239.0.0.1:1234", "udp://239.0.0.1:1234"),
        ("clip.mp4", "clip.mp4"),
        ("/data/clips/cam@2x.mp4", "/data/clips/cam@2x.mp4"),
        ("file:///data/clips/cam@2x.mp4", "file:///data/clips/cam@2x.mp4"),
        ("/data/a b.mp4", "/data/a b.mp4"),
        ("clips/a:b@c.mp4", "clips/a:b@c.mp4"),  # a path: its `user` part holds a /
        ("", ""),
    ],
)
def test_redact_url_keeps_normal_urls_as_before(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cannot open rtsp://admin:pw@h/x: refused", "cannot open rtsp://***@h/x: refused"),
        ("open 'rtsp://u:p@h/x' failed", "open 'rtsp://***@h/x' failed"),
        ("(rtsp://u:p@[::1]:8554/x), x", "(rtsp://***@[::1]:8554/x), x"),
        ("see http://h/x and mail a@b", "see http://h/x and mail a@b"),
        ("rtsp://u:p@h/x, kafka://k:q@b:9092 down", "rtsp://***@h/x, kafka://***@b:9092 down"),
        ("no url here a@b", "no url here a@b"),
        ("rtsp://@host/x", "rtsp://@host/x"),
        ("file:///clips/cam@2x.mp4 is short", "file:///clips/cam@2x.mp4 is short"),
        ("rtsp://host/x?channel=1&subtype=0 stalled", "rtsp://host/x?channel=1&subtype=0 stalled"),
        ("", ""),
    ],
)
def test_scrub_keeps_normal_text_as_before(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("Password", True),
        ("passwd", True),
        ("pass", True),
        ("pwd", True),
        ("token", True),
        ("access_token", True),
        ("X-Amz-Security-Token", True),
        ("api_key", True),
        ("apikey", True),
        ("apiKey", True),
        ("secret", True),
        ("key", True),
        ("auth", True),
        ("sig", True),
        ("sasl.password", True),
        ("user", False),
        ("username", False),
        ("channel", False),
        ("subtype", False),
        ("keyframe", False),
        ("passthrough", False),
    ],
)
def test_which_query_keys_are_secret(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


# end to end: the messages a refused camera produces (port 9 refuses at once, or FFmpeg rejects
# the URL at once: either way no network wait)
REFUSED = [
    "rtsp://admin:pa/Secret3@127.0.0.1:9/x",
    "rtsp://admin:pa#Secret1@127.0.0.1:9/x",
    "rtsp://admin:pa?Secret@127.0.0.1:9/x",
    "rtsp://user:p@Secret@127.0.0.1:9/x",
    "rtsp://127.0.0.1:9/x?user=admin&password=Secret5",
]


def rtsp_source(url: str, **config: Any) -> Any:
    """An RTSP source reading `url` (validation, which refuses some of these URLs, is bypassed:
    masking must hold wherever a URL comes from)."""
    plan = source_plan({"id": "cam0", "url": "rtsp://127.0.0.1:9/x", "config": config})
    return plan.cls(plan.config, SourceContext("cam0", url, NodeMetrics("cam0"), asyncio.Event()))


@pytest.mark.parametrize(
    "url", [u for u in REFUSED if u.count("@") > 1 or "/Secret" in u or "#" in u or "?Secret" in u]
)
def test_validation_refuses_an_unencoded_password_without_showing_it(url: str) -> None:
    """FFmpeg cannot read these URLs at all: they would be retried for ever."""
    with pytest.raises(GraphConfigError) as e:
        source_plan({"id": "cam0", "url": url})
    assert "percent-encode them in the password (%2F, %3F, %23, %40)" in str(e.value)
    assert "Secret" not in str(e.value)


@pytest.mark.parametrize("url", REFUSED)
async def test_validate_connect_line_of_a_refused_camera_hides_the_password(url: str) -> None:
    check = await _check_source("cam0", "source.rtsp", rtsp_source(url), url, 10.0)
    line = check.line()
    assert not check.ok
    assert "Secret" not in line
    assert "FAILED source cam0 (source.rtsp, rtsp://" in line
    assert "127.0.0.1:9/x" in line


@pytest.mark.parametrize("url", REFUSED)
async def test_rtsp_retry_warnings_and_end_reason_hide_the_password(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = rtsp_source(url, max_reconnects=1, backoff_initial_s=0.01, backoff_jitter=0)
    emitted: list[Any] = []

    async def emit(item: Any) -> None:
        emitted.append(item)

    with caplog.at_level(logging.DEBUG):
        await asyncio.wait_for(source.run(emit), 10.0)
    reasons = " ".join(getattr(item, "reason", "") for item in emitted)
    assert "attempt 1" in caplog.text  # the retry warning was logged
    assert "127.0.0.1:9/x" in caplog.text
    assert "Secret" not in caplog.text
    assert "gave up" in reasons
    assert "Secret" not in reasons


@pytest.mark.parametrize("url", REFUSED)
def test_demuxer_error_and_safe_url_hide_the_password(url: str) -> None:
    with pytest.raises(SourceError) as raised:
        Demuxer("cam0", url, {"rtsp_transport": "tcp"}, (2.0, 2.0))
    assert "Secret" not in str(raised.value)
    assert "127.0.0.1:9/x" in str(raised.value)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("tritonuser:TriSecret@127.0.0.1:8001", "***@127.0.0.1:8001"),  # gRPC takes host:port
        ("bob:KafSecret9@broker:9092", "***@broker:9092"),
        ("u:p/Secret@h:1", "***@h:1"),
        ("u:p@Secret@h:1", "***@h:1"),
        ("user:pass@host/x", "***@host/x"),
    ],
)
def test_an_address_without_a_scheme_loses_its_credentials(address: str, masked: str) -> None:
    assert redact_url(address) == masked
    text = f"node detect: Triton at {address} does not answer: errors resolving {address}"
    assert scrub(text) == f"node detect: Triton at {masked} does not answer: errors resolving {masked}"
    assert scrub(f"'{address}'") == f"'{masked}'"


@pytest.mark.parametrize("text", ["at 12:30 user@host", "time 12:30:01 ok", "clips/a:b@c.mp4", "host:8001"])
def test_text_that_only_looks_like_an_address_stays(text: str) -> None:
    assert scrub(text) == text


def test_a_masked_query_value_keeps_the_colon_that_ends_the_url_in_a_message() -> None:
    text = "cam0: cannot open rtsp://h:8655/cam?token=TOKsecret987: Connection refused"
    assert scrub(text) == "cam0: cannot open rtsp://h:8655/cam?token=***: Connection refused"
    assert scrub("x?token=a:Secret:c rest") == "x?token=*** rest"  # a colon inside stays masked
