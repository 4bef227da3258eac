"""Shared inputs for simulator tests: the shipped catalog and cost models for two models."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.costs import CostModels
from simulator.hardware import Catalog, load_catalog
from simulator.models import load_model

DATA = Path(__file__).with_name("data")


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="session")
def costs(catalog: Catalog) -> CostModels:
    return CostModels(load_model("llama-3-8b"), catalog)


@pytest.fixture(scope="session")
def costs_70b(catalog: Catalog) -> CostModels:
    return CostModels(load_model("llama-3-70b"), catalog)
