"""The hardware catalog: shipped entries with sources, user extensions, errors."""

from __future__ import annotations

import re

import pytest

from simulator.errors import SimInputError
from simulator.hardware import DEFAULT_CATALOG, Catalog, load_catalog

REQUIRED = ("H100", "H200", "A100-80G", "L40S", "A10G", "L4", "H20", "CPU-DDR5")


def test_catalog_has_every_required_tier(catalog: Catalog) -> None:
    assert set(REQUIRED) <= set(catalog.names())
    assert catalog.names("cpu") == ["CPU-DDR5"]
    h100 = catalog["H100"]
    assert (h100.peak_bf16_tflops, h100.memory_gib, h100.memory_bandwidth_gbs, h100.watts) == (989, 79.65, 3350, 700)
    assert h100.flops == pytest.approx(989e12 * h100.compute_efficiency)


def test_every_entry_cites_a_source_and_prices_are_marked_as_assumptions() -> None:
    text = DEFAULT_CATALOG.read_text()
    blocks = re.split(r"\n  (?=[A-Za-z0-9-]+:\n)", text.split("\nhardware:\n", 1)[1])
    for block in blocks:
        name = block.split(":", 1)[0].strip()
        if name in REQUIRED:
            assert re.search(r"https?://", block), f"{name} cites no source"
            assert "Price" in block, f"{name} does not say where its price comes from"
    assert "ASSUMPTION" in text


def test_user_catalog_overrides_fields_and_adds_entries(tmp_path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text("hardware:\n  H100: {usd_per_hour: 1.99}\n  MI300X:\n    kind: gpu\n"
                    "    accelerator_type: MI300X\n    peak_bf16_tflops: 1307\n    memory_gib: 192\n"
                    "    memory_bandwidth_gbs: 5300\n    interconnect_gbs: 448\n    network_gbps: 400\n"
                    "    network_latency_us: 10\n    usd_per_hour: 3.5\n    watts: 750\n    num_cpus: 8\n"
                    "    max_devices_per_node: 8\n"
                    "links:\n  - {src: H100, dst: MI300X, gbps: 100, latency_us: 20}\n")
    cat = load_catalog(user)
    assert cat["H100"].usd_per_hour == 1.99 and cat["H100"].memory_gib == 79.65
    assert cat["MI300X"].memory_gib == 192
    assert cat.links[0].gbps == 100
    # a price given without its source is not passed off as the shipped entry's source
    assert cat["H100"].price_source == f"--catalog {user}" and cat["MI300X"].price_source == f"--catalog {user}"
    assert load_catalog()["H100"].price_source.startswith("specialty clouds")


def test_memory_is_gib_as_the_driver_reports_it(catalog) -> None:
    """An H200 reports 143771 MiB (our runs): 150.8e9 bytes, not 141e9; 0.9 of it is usable."""
    assert catalog["H200"].memory_bytes == pytest.approx(143771 * 2**20 * 0.9, rel=1e-3)
    assert catalog["H100"].memory_bytes == pytest.approx(81559 * 2**20 * 0.9, rel=1e-3)


def test_measured_memory_replaces_the_datasheet(catalog) -> None:
    """Free bytes measured on the device (other processes' use subtracted), less the engine's reserve."""
    total, free = 143771 * 2**20, 143771 * 2**20 - 3 * 2**30
    measured = catalog.with_measured_memory("H200", total, free)
    assert measured["H200"].memory_bytes == pytest.approx(free - 0.1 * total)
    assert catalog["H200"].memory_bytes == pytest.approx(0.9 * total, rel=1e-3)  # the original is unchanged


def test_every_price_names_its_source(catalog) -> None:
    lines = catalog.price_sources(["H100", "L40S", "H100"])
    assert lines == [f"H100 $2.99/h: {catalog['H100'].price_source}", f"L40S $1.86/h: {catalog['L40S'].price_source}"]
    assert all(catalog[n].price_source != "not stated" for n in catalog.names())


@pytest.mark.parametrize("body, message", [
    ("hardware:\n  H100: {wattz: 3}\n", "unknown field 'wattz'"),
    ("hardware:\n  H100: {memory_gib: -1}\n", "memory_gib must be a number >= 0"),
    ("hardware:\n  H100: {memory_gb: 80}\n", "memory_gb is now memory_gib"),
    ("hardware:\n  H100: {compute_efficiency: 1.5}\n", r"compute_efficiency must be in \(0, 1\]"),
    ("hardware:\n  X1: {kind: gpu}\n", "hardware X1: missing field"),
    ("hardwares: {}\n", "unknown section"),
    ("links:\n  - {src: H100, dst: Nope, gbps: 1, latency_us: 1}\n", "unknown hardware 'Nope'"),
    ("hardware: [\n", "not valid YAML"),
])
def test_bad_catalogs_name_the_problem(tmp_path, body: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(SimInputError, match=message):
        load_catalog(path)


def test_unknown_hardware_lists_the_catalog(catalog: Catalog) -> None:
    with pytest.raises(SimInputError, match="unknown hardware 'B300'.*H100"):
        catalog["B300"]
