"""The committed generated modules match tierserve.proto, and messages map to engine types."""

from __future__ import annotations

import pytest

from engine.sampling_params import InvalidRequestError, SamplingParams
from router.grpc_convert import sampling_from_proto
from router.proto import generate
from router.proto import tierserve_pb2 as pb


def test_generated_modules_are_up_to_date():
    assert generate.stale_outputs() == [], "run: python -m router.proto.generate"


def test_generated_modules_carry_no_version_pins():
    for name in ("tierserve_pb2.py", "tierserve_pb2_grpc.py"):
        text = (generate.PROTO_DIR / name).read_text()
        assert "ValidateProtobufRuntimeVersion" not in text and "GRPC_GENERATED_VERSION" not in text


def test_unset_sampling_fields_take_engine_defaults():
    assert sampling_from_proto(pb.SamplingParams()) == SamplingParams()


def test_every_sampling_field_is_carried():
    message = pb.SamplingParams(max_tokens=9, temperature=0.25, top_k=5, top_p=0.5, seed=7, stop=["x", "yz"],
                                stop_token_ids=[3, 4], ignore_eos=True, logprobs=0, min_tokens=2)
    assert sampling_from_proto(message) == SamplingParams(
        max_tokens=9, temperature=0.25, top_k=5, top_p=0.5, seed=7, stop=("x", "yz"), stop_token_ids=(3, 4),
        ignore_eos=True, logprobs=0, min_tokens=2)


def test_explicit_zero_max_tokens_is_refused_not_defaulted():
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        sampling_from_proto(pb.SamplingParams(max_tokens=0))
