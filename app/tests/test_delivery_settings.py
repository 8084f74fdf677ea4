"""The delivery settings are refused at start-up when out of range, naming the setting."""

from __future__ import annotations

import pytest

from koinonia.delivery.jobs import provider_slots
from koinonia.settings import SettingsError, load_settings

REQUIRED = {
    "KOINONIA_DATABASE_URL": "postgres://u:p@127.0.0.1:6432/db",
    "KOINONIA_REDIS_URL": "redis://127.0.0.1:6379/0",
}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KOINONIA_SMS_CHUNK_SIZE", "0"),
        ("KOINONIA_SMS_CHUNK_SIZE", "1001"),
        ("KOINONIA_SMS_SEND_CONCURRENCY", "0"),
        ("KOINONIA_SMS_SEND_CONCURRENCY", "501"),
        ("KOINONIA_SMS_WORKER_SEND_CONCURRENCY", "-1"),
        ("KOINONIA_SMS_WORKER_SEND_CONCURRENCY", "5001"),
        ("KOINONIA_SMS_UNKNOWN_RESOLVE_SECONDS", "59"),
        ("KOINONIA_SMS_UNKNOWN_RESOLVE_SECONDS", "604801"),
        ("KOINONIA_SMS_CHUNK_SIZE", "many"),
        ("KOINONIA_SMS_STALLED_AFTER_SECONDS", "9"),
        ("KOINONIA_SMS_STALLED_AFTER_SECONDS", "45"),
        ("KOINONIA_SMS_STALLED_AFTER_SECONDS", "420"),
        ("KOINONIA_SMS_STALLED_AFTER_SECONDS", "3601"),
    ],
)
def test_out_of_range_delivery_setting_is_refused_naming_it(monkeypatch, name, value):
    for key, default in REQUIRED.items():
        monkeypatch.setenv(key, default)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings()


def test_delivery_settings_in_range_are_read(monkeypatch):
    for key, default in REQUIRED.items():
        monkeypatch.setenv(key, default)
    monkeypatch.setenv("KOINONIA_SMS_CHUNK_SIZE", "1000")
    monkeypatch.setenv("KOINONIA_SMS_SEND_CONCURRENCY", "1")
    monkeypatch.setenv("KOINONIA_SMS_UNKNOWN_RESOLVE_SECONDS", "60")
    monkeypatch.setenv("KOINONIA_SMS_WORKER_SEND_CONCURRENCY", "5000")
    monkeypatch.setenv("KOINONIA_SMS_STALLED_AFTER_SECONDS", "20")
    loaded = load_settings()
    assert loaded.sms_stalled_after_seconds == 20
    assert loaded.sms_worker_send_concurrency == 5000
    assert (loaded.sms_chunk_size, loaded.sms_send_concurrency) == (1000, 1)
    assert loaded.sms_unknown_resolve_seconds == 60


@pytest.mark.parametrize("seconds", ["10", "30", "60", "300", "600", "3600"])
def test_stalled_sweep_periods_that_divide_the_hour_are_read(monkeypatch, seconds):
    for key, default in REQUIRED.items():
        monkeypatch.setenv(key, default)
    monkeypatch.setenv("KOINONIA_SMS_STALLED_AFTER_SECONDS", seconds)
    assert load_settings().sms_stalled_after_seconds == int(seconds)


def test_a_worker_without_a_send_slot_bound_is_bounded_by_its_jobs_windows_only(monkeypatch):
    for key, default in REQUIRED.items():
        monkeypatch.setenv(key, default)
    assert provider_slots(load_settings()) is None
    monkeypatch.setenv("KOINONIA_SMS_WORKER_SEND_CONCURRENCY", "40")
    slots = provider_slots(load_settings())
    assert slots is not None and slots.free == 40
