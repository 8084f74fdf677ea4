"""The delivery settings are refused at start-up when out of range, naming the setting."""

from __future__ import annotations

import pytest

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
        ("KOINONIA_SMS_UNKNOWN_RESOLVE_SECONDS", "59"),
        ("KOINONIA_SMS_UNKNOWN_RESOLVE_SECONDS", "604801"),
        ("KOINONIA_SMS_CHUNK_SIZE", "many"),
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
    loaded = load_settings()
    assert (loaded.sms_chunk_size, loaded.sms_send_concurrency) == (1000, 1)
    assert loaded.sms_unknown_resolve_seconds == 60
