"""Worker and client settings from the environment, and the Celery configuration they give."""

from __future__ import annotations

import pytest

from lstmdet.errors import LstmdetError
from lstmdet.workers.settings import DEFAULT_BROKER_URL, QUEUES, Settings, celery_config, mask_url

TIME_VARS = ("LSTMDET_SOFT_TIME_LIMIT", "LSTMDET_TIME_LIMIT", "LSTMDET_VISIBILITY_TIMEOUT")


# --- settings -------------------------------------------------------------------------------------------------------


def test_settings_defaults():
    s = Settings.from_env({})
    assert s.broker_url == DEFAULT_BROKER_URL == "redis://127.0.0.1:6379/0"
    assert s.result_url == s.broker_url
    assert s.data_roots == ()
    assert s.default_queue == "cpu"
    assert s.soft_time_limit < s.time_limit < s.visibility_timeout


def test_result_url_follows_broker_unless_set():
    broker = "redis://:pw@redis.example:6380/2"
    assert Settings.from_env({"LSTMDET_BROKER_URL": broker}).result_url == broker
    s = Settings.from_env({"LSTMDET_BROKER_URL": broker, "LSTMDET_RESULT_URL": "redis://other:6379/5"})
    assert (s.broker_url, s.result_url) == (broker, "redis://other:6379/5")


def test_data_roots_parsed_and_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"LSTMDET_DATA_ROOTS": f":{tmp_path}/a/../b::rel:"}
    assert Settings.from_env(env).data_roots == ((tmp_path / "b").resolve(), (tmp_path / "rel").resolve())


def test_time_limits_consistent_values_accepted():
    s = Settings.from_env(dict(zip(TIME_VARS, ("10", "20", "30"), strict=True)))
    assert (s.soft_time_limit, s.time_limit, s.visibility_timeout) == (10, 20, 30)
    big = Settings.from_env({"LSTMDET_SOFT_TIME_LIMIT": "90000"})  # derived hard and visibility follow soft
    assert 90000 < big.time_limit < big.visibility_timeout


@pytest.mark.parametrize(
    "soft, hard, vis",
    [("100", "100", "500"), ("100", "200", "200"), ("300", "200", "500"), ("100", "600", "500")],
)
def test_time_limit_order_enforced(soft, hard, vis):
    with pytest.raises(LstmdetError) as err:
        Settings.from_env(dict(zip(TIME_VARS, (soft, hard, vis), strict=True)))
    assert all(name in str(err.value) for name in TIME_VARS)


def test_hard_limit_alone_below_default_soft_refused():
    with pytest.raises(LstmdetError, match="LSTMDET_TIME_LIMIT"):
        Settings.from_env({"LSTMDET_TIME_LIMIT": "60"})


@pytest.mark.parametrize("name", [*TIME_VARS, "LSTMDET_MAX_DELIVERIES", "LSTMDET_RESULT_EXPIRES"])
@pytest.mark.parametrize("text", ["ten", "1.5", "0", "-3"])
def test_bad_integer_names_variable(name, text):
    with pytest.raises(LstmdetError, match=name):
        Settings.from_env({name: text})


def test_empty_integer_means_default():
    assert Settings.from_env({"LSTMDET_MAX_DELIVERIES": ""}).max_deliveries == Settings.max_deliveries


def test_bad_default_queue():
    with pytest.raises(LstmdetError, match="LSTMDET_DEFAULT_QUEUE"):
        Settings.from_env({"LSTMDET_DEFAULT_QUEUE": "fast"})
    assert Settings.from_env({"LSTMDET_DEFAULT_QUEUE": "gpu"}).default_queue == "gpu"


def test_celery_config():
    env = {"LSTMDET_BROKER_URL": "redis://b:1/0", "LSTMDET_RESULT_URL": "redis://r:2/0"}
    s = Settings.from_env({**env, **dict(zip(TIME_VARS, ("100", "200", "300"), strict=True))})
    c = celery_config(s)
    assert (c["broker_url"], c["result_backend"]) == ("redis://b:1/0", "redis://r:2/0")
    assert c["task_serializer"] == c["result_serializer"] == "json"
    assert c["accept_content"] == ["json"]
    assert c.get("result_accept_content", ["json"]) == ["json"]
    assert c["task_acks_late"] is True
    assert c["task_reject_on_worker_lost"] is True
    assert c["worker_prefetch_multiplier"] == 1
    assert c["broker_transport_options"]["visibility_timeout"] == 300
    assert c["result_backend_transport_options"]["visibility_timeout"] == 300
    assert c["visibility_timeout"] == 300
    assert c["visibility_timeout"] > c["task_time_limit"] == 200 > c["task_soft_time_limit"] == 100
    assert c["task_publish_retry"] is True
    assert 0 < c["task_publish_retry_policy"]["max_retries"] <= 10
    assert c["broker_connection_retry_on_startup"] is True
    assert c["result_expires"] == s.result_expires > 0
    assert [q.name for q in c["task_queues"]] == list(QUEUES) == ["gpu", "cpu"]
    assert c["task_default_queue"] == s.default_queue


def test_celery_config_keys_are_celery_settings():
    """Celery ignores a misspelt key silently; the one extra key is the documented top-level visibility_timeout."""
    from celery.app.defaults import NAMESPACES, flatten

    known = {name for name, _ in flatten(NAMESPACES)}
    assert set(celery_config(Settings())) - known == {"visibility_timeout"}


@pytest.mark.parametrize(
    "url, secret, shown",
    [
        ("redis://:secret@h:1/0", "secret", "redis://:***@h:1/0"),
        ("redis://user:hunter2@host:6379/2", "hunter2", "redis://user:***@host:6379/2"),
        ("rediss://:pw9@h:6380/0?ssl_cert_reqs=required", "pw9", "rediss://:***@h:6380/0?ssl_cert_reqs=required"),
        ("redis://:secret@[::1]:6379/0", "secret", "redis://:***@[::1]:6379/0"),
    ],
)
def test_mask_url_hides_password(url, secret, shown):
    masked = mask_url(url)
    assert secret not in masked
    assert masked == shown


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://user@h:1/3", "rediss://h:6380/0?ssl=1"])
def test_mask_url_leaves_passwordless_urls(url):
    assert mask_url(url) == url


@pytest.mark.parametrize("url", ["http://x", "amqp://guest@localhost//", "localhost:6379", "unix:///tmp/redis.sock"])
def test_a_broker_url_that_is_not_redis_names_the_variable_and_the_schemes(url):
    with pytest.raises(LstmdetError) as info:
        Settings.from_env({"LSTMDET_BROKER_URL": url})
    message = str(info.value)
    assert message.startswith(f"LSTMDET_BROKER_URL={url} is not a Redis URL") and "\n" not in message
    assert "redis://" in message and "rediss://" in message
    with pytest.raises(LstmdetError, match=r"^LSTMDET_RESULT_URL=http://y is not a Redis URL"):
        Settings.from_env({"LSTMDET_RESULT_URL": "http://y"})


def test_an_unparsable_broker_url_is_refused_without_showing_its_password():
    with pytest.raises(LstmdetError) as info:
        Settings.from_env({"LSTMDET_BROKER_URL": "redis://:secret@host:xx/0"})
    assert str(info.value).startswith("LSTMDET_BROKER_URL is not a valid URL (") and "secret" not in str(info.value)
    with pytest.raises(LstmdetError) as info:
        Settings.from_env({"LSTMDET_BROKER_URL": "http://:secret@host:6379/0"})
    assert "secret" not in str(info.value) and "***" in str(info.value)


def test_leases_default_to_30_s_renewed_every_5_s_and_are_settable():
    assert (Settings().lease_seconds, Settings().heartbeat_seconds) == (30, 5)
    s = Settings.from_env({"LSTMDET_LEASE_SECONDS": "60", "LSTMDET_HEARTBEAT_SECONDS": "10"})
    assert (s.lease_seconds, s.heartbeat_seconds) == (60, 10)


def test_leases_can_be_turned_off_for_measurements_only():
    assert Settings.from_env({}).leases is True
    assert Settings.from_env({"LSTMDET_LEASES": "0"}).leases is False
    with pytest.raises(LstmdetError, match="LSTMDET_LEASES='maybe': use 1 or 0"):
        Settings.from_env({"LSTMDET_LEASES": "maybe"})


def test_a_heartbeat_longer_than_a_third_of_the_lease_is_refused():
    with pytest.raises(LstmdetError, match=r"LSTMDET_HEARTBEAT_SECONDS.*third.*LSTMDET_LEASE_SECONDS"):
        Settings.from_env({"LSTMDET_LEASE_SECONDS": "10", "LSTMDET_HEARTBEAT_SECONDS": "4"})
