"""Fuzzing: any graph text or API body gives a clean error or a valid result; nothing crashes or hangs."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import yamlsource
from engine.api import create_app
from engine.errors import GraphConfigError
from engine.plan import build_plan
from engine.runtime import RunOptions
from engine.store import MemoryStore
from engine.testing import plan_from_yaml
from engine.worker import Worker

VALID = {
    "name": "g",
    "sources": [{"id": "cam0", "url": "clip.mp4", "config": {"loop": True}}],
    "nodes": [
        {
            "id": "decode",
            "op": "decode.pyav",
            "inputs": ["sources"],
            "queue": {"size": 4, "policy": "drop_oldest"},
        },
        {"id": "pre", "op": "preprocess.cpu", "inputs": ["decode"], "config": {"width": 320, "height": 192}},
        {"id": "sink", "op": "sink.jsonl", "inputs": ["pre"]},
    ],
}
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PATHS = [
    ("name",),
    ("sources", 0, "url"),
    ("sources", 0, "config"),
    ("sources", 0, "op"),
    ("nodes", 0, "op"),
    ("nodes", 0, "queue"),
    ("nodes", 0, "queue", "policy"),
    ("nodes", 1, "config", "width"),
    ("nodes", 1, "inputs"),
    ("nodes", 2, "batch"),
    ("nodes", 0, "workers"),
    ("nodes",),
    ("sources",),
    ("nodes", 1, "config", "mean"),
    ("device",),
    ("tracing",),
    ("nodes", 2, "id"),
]


def mutate(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = yaml.safe_load(yaml.safe_dump(doc))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def outcome(text: str) -> str:
    """'valid', or 'error' after checking every issue names its place and reason."""
    issues = []
    try:
        build_plan(yamlsource.load_text(text, "fuzz.yaml"))
    except GraphConfigError as e:
        issues = e.issues
    else:
        return "valid"
    assert issues
    for issue in issues:
        assert issue.reason
        assert issue.origin.startswith("fuzz.yaml")
    return "error"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PATHS), values)
def test_any_value_anywhere_gives_a_located_error_or_a_plan(path: tuple[str | int, ...], value: Any) -> None:
    outcome(yaml.safe_dump(mutate(VALID, path, value)))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_a_clean_error_or_a_plan(text: str) -> None:
    outcome(text)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 400), st.text(alphabet=":{}[]-,'\"#&*!|>%@` \n\t", min_size=1, max_size=3))
def test_damaged_valid_yaml_gives_a_clean_error_or_a_plan(at: int, junk: str) -> None:
    text = yaml.safe_dump(VALID)
    at = min(at, len(text))
    outcome(text[:at] + junk + text[at:])


GRAPH = """\
name: fuzz_api
sources: [{id: seed, url: synthetic, op: test.synthetic, config: {frames: 1}}]
nodes: [{id: out, op: test.collect, inputs: [sources]}]
"""
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from(["id", "url", "op", "config", "extra"]), json_values, max_size=5)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies)
def test_any_api_body_gives_201_or_a_clean_4xx(body: dict[str, Any]) -> None:
    async def go() -> None:
        worker = Worker(plan_from_yaml(GRAPH), RunOptions(), MemoryStore(), "w", lease_ttl_s=1.0)
        transport = httpx.ASGITransport(app=create_app(worker, None))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            response = await asyncio.wait_for(client.post("/streams", json=body), 5)
            assert response.status_code in (201, 409, 422), response.text
            if response.status_code == 422:
                assert response.json()["detail"]

    asyncio.run(go())
