"""Job records in Redis: errors explained, states forward only, records listed and expired."""

from __future__ import annotations

from lstmdet.workers.store import BrokerUnavailable, explain


def test_explain_masks_password():
    import redis

    url = "redis://:secret@h:1/0"
    down = explain(redis.ConnectionError("Connection refused"), url)
    auth = explain(redis.AuthenticationError("WRONGPASS invalid password"), url)
    assert isinstance(down, BrokerUnavailable) and isinstance(auth, BrokerUnavailable)
    assert "cannot reach" in str(down) and "credentials" in str(auth)
    assert all("secret" not in str(e) and "redis://:***@h:1/0" in str(e) for e in (down, auth))
