"""The `objs` fixture of the manifest tests: one rendering of k8s/ per overlay."""

from __future__ import annotations

import copy

import pytest

from tests.unit.k8s.manifests import OVERLAYS, Obj, _rendered


@pytest.fixture(params=OVERLAYS)
def objs(request: pytest.FixtureRequest) -> list[Obj]:
    return copy.deepcopy(list(_rendered(request.param)))
