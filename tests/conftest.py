"""Shared fixtures: one real stack per mode (anvil, facilitator, upstream, verifier, Envoy)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dev.stack import Stack  # noqa: E402


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack-filter"), mode="filter") as s:
        yield s


@pytest.fixture(scope="session")
def authz_stack(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack-ext-authz"), mode="ext-authz") as s:
        yield s
