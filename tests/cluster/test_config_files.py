"""The shipped example configs validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.config import load_cluster_config

CONFIGS = sorted((Path(__file__).parents[2] / "deploy" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates(path):
    config = load_cluster_config(path)
    assert config.disaggregated or config.colocated
