"""RouterConfig validation and the API-key check."""

from __future__ import annotations

import pytest

from router.auth import ApiKeyCheck
from router.config import RouterConfig, RouterConfigError
from router.errors import ErrorKind, RequestError


@pytest.mark.parametrize("kwargs, message", [
    ({"grpc_port": 70000}, "grpc_port"),
    ({"http_port": -1}, "http_port"),
    ({"grpc_port": None, "http_port": None}, "at least one"),
    ({"grpc_port": 9000, "http_port": 9000}, "must differ"),
    ({"api_keys": ("",)}, "api_keys"),
    ({"api_keys": (" padded ",)}, "api_keys"),
    ({"host": ""}, "host"),
    ({"model_name": ""}, "model_name"),
    ({"request_timeout_s": 0}, "request_timeout_s"),
    ({"shutdown_grace_s": -1}, "shutdown_grace_s"),
])
def test_bad_config_is_refused_with_the_field_named(kwargs, message):
    with pytest.raises(RouterConfigError, match=message):
        RouterConfig(**kwargs)


def test_config_defaults_and_key_list():
    config = RouterConfig(api_keys=["a", "b"], grpc_port=0, http_port=0)
    assert config.api_keys == ("a", "b") and config.request_timeout_s == 600.0


def accepted(check: ApiKeyCheck, header: str | None) -> bool:
    """Whether ``check`` lets a caller with this authorization header in (False: refused as unauthenticated)."""
    try:
        check.check(header)
    except RequestError as e:
        assert e.kind is ErrorKind.UNAUTHENTICATED
        return False
    return True


@pytest.mark.parametrize("header", [None, "", "Bearer anything", "Basic dXNlcg=="])
def test_no_keys_accepts_everyone(header):
    assert accepted(ApiKeyCheck(()), header)
    assert not accepted(ApiKeyCheck(("k1",)), header)  # what keys would refuse


@pytest.mark.parametrize("header, message", [
    (None, "missing API key"), ("", "missing API key"), ("Bearer ", "missing API key"),
    ("Token k1", "missing API key"), ("Bearer k3", "invalid API key"), ("Bearer k1x", "invalid API key"),
])
def test_bad_keys_are_unauthenticated(header, message):
    with pytest.raises(RequestError, match=message) as info:
        ApiKeyCheck(("k1", "k2")).check(header)
    assert info.value.kind is ErrorKind.UNAUTHENTICATED


@pytest.mark.parametrize("header", ["Bearer k1", "bearer k2", "  Bearer   k2  "])
def test_good_keys_pass(header):
    assert accepted(ApiKeyCheck(("k1", "k2")), header)
    assert not accepted(ApiKeyCheck(("k3",)), header)  # the key decides, not the header's shape
