"""Time-ordered string ids: 26 characters that sort as the moments they were made (ULID layout)."""

from __future__ import annotations

import os
import threading
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U
_lock = threading.Lock()
_last = (-1, 0)


def new_id(at: datetime) -> str:
    """A new id for something made at `at`; ids made later, or in this process at the same
    millisecond, sort after it."""
    global _last
    millis = int(at.timestamp() * 1000)
    with _lock:
        last_millis, last_random = _last
        if millis <= last_millis:
            # Same (or an earlier, fake-clock) millisecond: stay monotonic within the process.
            millis, random = last_millis, last_random + 1
        else:
            random = int.from_bytes(os.urandom(10), "big") >> 1  # room to count upwards
        _last = (millis, random)
    value = (millis << 80) | random
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
