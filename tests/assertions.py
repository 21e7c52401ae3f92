"""Assertions shared by the test modules."""

import pytest


def assert_one_line_error(error_type: type[Exception], call, *substrings: str) -> str:
    """`call()` raises `error_type` with a one-line message holding every substring; returns the message."""
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    for substring in substrings:
        assert substring in message, message
    return message
