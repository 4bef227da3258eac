"""Cost models and memory budgets per replica, roofline or calibrated by profiles."""

from __future__ import annotations

from dataclasses import replace

from simulator.calibration import CalibratedCost
from simulator.errors import SimInputError
from simulator.hardware import Catalog, HardwareSpec
from simulator.links import LinkTable
from simulator.models import ModelSpec
from simulator.offload import OffloadCost, OffloadCurves, OffloadLink
from simulator.profiles import Profile
from simulator.roofline import IterationCost, RooflineCost, SlowedCost
from simulator.serving import NONE, ServingCosts


class CostModels:
    """Builds (and caches) one cost model per (hardware, tp); a profile measured on that hardware
    and tp replaces roofline estimates where it has measurements (several profiles of one hardware
    and tp count as one: e.g. decode_step and shared_prefix_decode files from two benchmarks).
    A profile's measured device memory and all-reduce replace the catalog's for that device kind
    (``self.catalog``)."""

    def __init__(self, model: ModelSpec, catalog: Catalog, profiles: tuple[Profile, ...] = (),
                 links: LinkTable | None = None, serving: ServingCosts = NONE, slowdown: float = 1.0) -> None:
        for p in profiles:
            for other in {p.model, *(m.model for m in p.measurements)} - {None, model.name}:
                raise SimInputError(f"profile for {p.device} was measured on model {other!r}, "
                                    f"not {model.name!r} (drop its 'model' keys to use it anyway)")
        self._datasheet = catalog
        for p in profiles:
            if p.memory is not None:
                catalog = catalog.with_measured_memory(catalog.resolve(p.device), *p.memory)
            if p.allreduce is not None:
                catalog = catalog.with_allreduce(catalog.resolve(p.device), p.allreduce.latency_s,
                                                 p.allreduce.ranks, p.allreduce.busbw_bytes_s)
        self.model, self.catalog = model, catalog
        self.links = links or LinkTable(catalog)
        measured = [p.serving for p in profiles if p.serving is not None]
        self.serving = measured[-1] if measured else serving
        self.slowdown = slowdown  # every iteration time (and serving cost) times this: uncertainty bands
        self._profiles = profiles
        self.profiles: dict[tuple[str, int], Profile] = {}
        for p in profiles:
            key = (catalog.resolve(p.device), p.tp)
            earlier = self.profiles[key].measurements if key in self.profiles else ()
            self.profiles[key] = replace(p, device=key[0], measurements=earlier + p.measurements)
        self._costs: dict[tuple[str, int], IterationCost] = {}

    @property
    def calibrated(self) -> bool:
        return bool(self.profiles)

    def slowed(self, factor: float) -> CostModels:
        """The same models with every iteration (and per-request serving cost) ``factor`` times slower."""
        return CostModels(self.model, self._datasheet, self._profiles, self.links, self.serving,
                          self.slowdown * factor) if factor != 1.0 else self

    def path_costs(self) -> ServingCosts:
        return self.serving.scaled(self.slowdown) if self.slowdown != 1.0 else self.serving

    def replica(self, hardware: str, tp: int) -> IterationCost:
        key = (hardware, tp)
        if key not in self._costs:
            cost = RooflineCost(self.model, self.catalog[hardware], tp)
            profile = self.profiles.get(key)
            serving = self.serving
            cost = CalibratedCost(cost, profile, serving.launch_scale, serving.next_launch_s,
                                  serving.delivery_waits_launch, serving.decode_batch_slowdown) if profile else cost
            self._costs[key] = SlowedCost(cost, self.slowdown) if self.slowdown != 1.0 else cost
        return self._costs[key]

    def offload(self, compute: str, tp: int, attention: str, share: float, micro_batches: int) -> OffloadCost:
        """A compute replica of ``tp`` devices using ``share`` attention devices; data moves over
        min(tp, share) device-pair links (the same rule as KV transfers)."""
        link = self.links.between(compute, attention)
        return OffloadCost(self.replica(compute, tp), self.replica(attention, 1), share,
                           OffloadLink(link.bandwidth * min(tp, share), link.latency_s), micro_batches,
                           OffloadCurves.of(self.profiles.get((compute, tp))))


def activation_bytes(model: ModelSpec, tp: int, max_batched_tokens: int) -> float:
    """Working memory of one iteration of ``max_batched_tokens`` tokens (rough upper bound)."""
    per_token = 4 * model.hidden_size + 3 * model.intermediate_size / tp
    return max_batched_tokens * per_token * model.dtype_bytes


def kv_capacity_tokens(model: ModelSpec, hw: HardwareSpec, tp: int, max_batched_tokens: int,
                       holds_weights: bool = True) -> int:
    """KV tokens a replica can hold after weights and activations; <= 0 when the model does not fit."""
    free = hw.memory_bytes * tp
    if holds_weights:
        free -= model.weight_bytes + activation_bytes(model, tp, max_batched_tokens)
    return int(free // model.kv_bytes_per_token)


def min_tp(model: ModelSpec, hw: HardwareSpec, max_batched_tokens: int, min_kv_tokens: int) -> int | None:
    """The smallest power-of-two tp on one node that holds the weights and ``min_kv_tokens`` of KV."""
    tp = 1
    while tp <= hw.max_devices_per_node:
        if kv_capacity_tokens(model, hw, tp, max_batched_tokens) >= min_kv_tokens:
            return tp
        tp *= 2
    return None
