"""The typed exceptions: every one is a CervrtError, each kind is its own type, and cancel tokens."""

from __future__ import annotations

import threading

import pytest

from cervrt import errors
from cervrt.cancel import CancelToken, check_token, is_cancelled, raise_if_cancelled
from cervrt.errors import (
    Cancelled,
    CervrtError,
    DeviceError,
    InputError,
    MissingDependencyError,
    ModelError,
    SlideError,
)

KINDS = (InputError, SlideError, ModelError, DeviceError, Cancelled)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_a_cervrt_error_and_no_other_kind(kind):
    exc = kind("what is wrong: what to do")
    assert isinstance(exc, CervrtError)
    assert [other for other in KINDS if isinstance(exc, other)] == [kind]


def test_missing_dependency_names_the_extra_and_is_an_import_error():
    exc = MissingDependencyError("fastapi", "serve")
    assert isinstance(exc, ImportError) and isinstance(exc, CervrtError)
    assert str(exc) == 'fastapi is not installed: run pip install "cervrt[serve]"'


def test_all_lists_every_exception():
    assert set(errors.__all__) == {"CervrtError", "InputError", "SlideError", "ModelError", "DeviceError",
                                   "Cancelled", "MissingDependencyError"}


@pytest.mark.parametrize("make", [threading.Event, CancelToken])
def test_tokens_with_is_set(make):
    token = make()
    assert check_token(token) is token and not is_cancelled(token)
    raise_if_cancelled(token)
    token.set() if isinstance(token, threading.Event) else token.cancel()
    assert is_cancelled(token)
    with pytest.raises(Cancelled, match=r"^the slide was cancelled$"):
        raise_if_cancelled(token, "the slide")


def test_a_callable_token_and_none():
    flag = []
    assert not is_cancelled(None) and not is_cancelled(lambda: bool(flag))
    flag.append(1)
    assert is_cancelled(lambda: bool(flag))


def test_a_token_of_the_wrong_kind_is_an_input_error():
    with pytest.raises(InputError, match=r"cancel must be a threading\.Event"):
        check_token(True)
