"""ServeConfig: loopback by default, a token required anywhere else, bounded numbers."""

from __future__ import annotations

import pytest

from cervrt.errors import InputError
from cervrt.serve.config import ServeConfig, is_loopback


def test_loopback_is_the_default_and_needs_no_token():
    config = ServeConfig("m.onnx")
    assert config.host == "127.0.0.1" and config.token is None and is_loopback(config.host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_addresses(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_other_addresses_need_a_token(host):
    assert not is_loopback(host)
    with pytest.raises(InputError, match=rf"host {host} is not loopback: pass --token TOKEN"):
        ServeConfig("m.onnx", host=host)
    assert ServeConfig("m.onnx", host=host, token="s3cret").token == "s3cret"


@pytest.mark.parametrize(("changes", "message"), [
    ({"port": 70000}, "port must be 0..65535"),
    ({"workers": 0}, "workers must be a positive integer"),
    ({"queue": -1}, "queue must be a positive integer"),
    ({"token": "two words"}, "token must be a non-empty string without spaces"),
    ({"max_body_mb": 0}, "max_body_mb must be positive"),
])
def test_bad_settings_are_one_line(changes, message):
    with pytest.raises(InputError, match=message):
        ServeConfig("m.onnx", **changes)
