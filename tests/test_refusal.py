"""The retry answer's delay: grows while the trouble lasts, jittered, reset by a stream that opens."""

from __future__ import annotations

from flask_sse.refusal import LONGEST_RETRY, Trouble

from .conftest import Clock


def test_the_retry_grows_with_the_spell_of_trouble_and_is_jittered() -> None:
    clock = Clock()
    trouble = Trouble(clock)
    first = [trouble.retry_ms(1000) for _ in range(200)]
    assert all(500 <= retry <= 1500 for retry in first)  # SSE_RETRY, jittered
    assert max(first) - min(first) > 500  # spread out, not one moment for every browser
    clock.now += 20  # twenty seconds into the outage: half of that, jittered
    assert all(5000 <= trouble.retry_ms(1000) <= 15000 for _ in range(200))
    clock.now += 3600
    assert all(LONGEST_RETRY / 2 <= trouble.retry_ms(1000) <= LONGEST_RETRY * 1.5 for _ in range(200))
    trouble.ended()  # a stream opened: the next refusal starts a new spell
    assert trouble.retry_ms(1000) <= 1500
