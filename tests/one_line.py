"""`refusal`: what a refused call says, checked to be one line (the codebase's rule for errors)."""

import pytest


def refusal(call, error=ValueError):
    """The message of the `error` that `call()` raises, asserted to hold no line break."""
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message
    return message
