"""A checkpoint's rotary embedding parameters, from either config.json style.

transformers 5 writes one ``rope_parameters`` object (``{"rope_type": "llama3", "rope_theta":
500000.0, "factor": 8.0, ...}``); earlier releases wrote a top-level ``rope_theta`` and a
``rope_scaling`` object (null without scaling). Read as transformers 5.24 reads them
(modeling_rope_utils: ``convert_rope_params_to_dict``, ``standardize_rope_params``):
``rope_scaling`` when given, else ``rope_parameters``; a theta the object lacks is the top-level
``rope_theta``, else 10000; ``type`` is the old name of ``rope_type``; llama3's
``original_max_position_embeddings`` is a top-level one when given, else the object's, else
``max_position_embeddings``. Only default, linear and llama3 are implemented: another type, or
an option that would change the math, is a CheckpointError naming it, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.checkpoint_error import CheckpointError

DEFAULT_THETA = 10000.0  # transformers' RotaryEmbeddingConfigMixin.default_theta (Llama, Mistral, Qwen2)
# rope_type -> what its math reads besides rope_type and rope_theta (transformers requires them all,
# but llama3's original_max_position_embeddings, which falls back as above)
KEYS = {"default": (), "linear": ("factor",),
        "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
# options accepted only at the value that leaves the math unchanged (factor: under 'default')
NEUTRAL = {"partial_rotary_factor": 1.0, "attention_factor": 1.0, "factor": 1.0}
# read by no implemented type's math; transformers ignores it there too
INERT = ("original_max_position_embeddings",)


@dataclass(frozen=True)
class RopeScaling:
    """Linear or Llama 3.1 ("llama3") scaling of the rotary frequencies, every field resolved."""

    kind: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "llama3"):
            raise CheckpointError(f"rope scaling kind must be linear or llama3, got {self.kind!r}")
        if not self.factor > 0:
            raise CheckpointError(f"rope factor must be > 0, got {self.factor}")
        if self.kind == "llama3":
            low, high, original = self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings
            if low is None or high is None or original is None:
                unset = [name for name, value in (("low_freq_factor", low), ("high_freq_factor", high),
                                                  ("original_max_position_embeddings", original)) if value is None]
                raise CheckpointError(f"rope scaling llama3 needs {', '.join(unset)}")
            if not high > low:
                raise CheckpointError(f"rope high_freq_factor must exceed low_freq_factor, got {high} and {low}")
            if not original >= 1:
                raise CheckpointError(f"rope original_max_position_embeddings must be >= 1, got {original}")


def parse_rope(raw: dict, max_position_embeddings: int) -> tuple[float, RopeScaling | None]:
    """(theta, scaling or None) from a config.json dict."""
    field, params = _rope_object(raw)
    kind = params["rope_type"]
    if kind not in KEYS:
        raise CheckpointError(f"{field}: rope_type {kind!r} is not implemented (supported: {', '.join(KEYS)})")
    if kind == "llama3" and "original_max_position_embeddings" in raw:
        params["original_max_position_embeddings"] = raw["original_max_position_embeddings"]
    if "partial_rotary_factor" in raw:
        params.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    for key, value in params.items():
        if key in ("rope_type", "rope_theta", *KEYS[kind], *INERT):
            continue
        if key not in NEUTRAL or _number(field, key, value) != NEUTRAL[key]:
            raise CheckpointError(f"{field}: {key}={value!r} is not implemented for rope_type {kind!r}")
    theta = _number(field, "rope_theta", params["rope_theta"])
    if not theta > 0:
        raise CheckpointError(f"{field}: rope_theta must be > 0, got {theta}")
    if kind == "default":
        return theta, None
    missing = [k for k in KEYS[kind] if k not in params and k != "original_max_position_embeddings"]
    if missing:
        raise CheckpointError(f"{field}: rope_type {kind!r} needs {', '.join(missing)}")
    values = {k: _number(field, k, params.get(k, max_position_embeddings)) for k in KEYS[kind]}
    if kind == "llama3":
        return theta, RopeScaling(kind, values["factor"], values["low_freq_factor"], values["high_freq_factor"],
                                  int(values["original_max_position_embeddings"]))
    return theta, RopeScaling(kind, values["factor"])


def _rope_object(raw: dict) -> tuple[str, dict]:
    """The field the rope parameters come from and its object, normalized: ``rope_type`` set
    (from ``type``, else default) and ``rope_theta`` filled in from the top level."""
    given = {}
    for field in ("rope_scaling", "rope_parameters"):
        value = raw.get(field)
        if value is not None and not isinstance(value, dict):
            raise CheckpointError(f"{field} must be an object or null, got {value!r}")
        if value and any(isinstance(v, dict) for v in value.values()):
            raise CheckpointError(f"{field}: rope parameters per layer type are not implemented")
        if value:
            given[field] = _normalized(value, raw)
    if len(given) == 2 and given["rope_scaling"] != given["rope_parameters"]:
        raise CheckpointError("config.json gives rope_scaling and rope_parameters, and they differ: "
                              f"{raw['rope_scaling']} vs {raw['rope_parameters']}")
    if not given:
        return "rope_theta", _normalized({}, raw)
    field = next(iter(given))
    return field, given[field]


def _normalized(value: dict, raw: dict) -> dict:
    params = {k: v for k, v in value.items() if k != "type"}
    params.setdefault("rope_type", value.get("type", "default"))
    params.setdefault("rope_theta", raw.get("rope_theta", DEFAULT_THETA))
    return params


def _number(field: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{field}: {key} must be a number, got {value!r}")
    return float(value)
