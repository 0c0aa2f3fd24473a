"""Time-ordered string ids: 26 characters that sort as the moments they were made (ULID layout)."""

from __future__ import annotations

import base64
import os
import threading
from datetime import datetime

# Crockford's base32 (no I, L, O, U) in the order of RFC 4648's alphabet, so the C-speed
# b32encode does the work and a character's rank is its value's.
_CROCKFORD = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)
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
    # 10 characters of time (48 bits, led by two zero bits) and 16 of randomness (80 bits).
    time = base64.b32encode((millis << 30).to_bytes(10, "big"))[:10]
    return (time + base64.b32encode(random.to_bytes(10, "big"))).translate(_CROCKFORD).decode()
