"""Alerts reach someone: Prometheus sends its alerts to Alertmanager on the same host, which
notifies a webhook receiver on mon-target and a mailbox through a smart host that wants
SMTP AUTH (test receivers, prepare.yml). Stopping the app target fires its alert at both;
starting it again resolves it at both."""

import pathlib
import time

from conftest import api, container, internal_ip, listeners, received
from stackops import run_playbook

testinfra_hosts = ["mon-prom"]

WEBHOOK_LOG = "/var/lib/montest/receiver/webhook.jsonl"
MAIL_LOG = "/var/lib/montest/receiver/mail.jsonl"
RULES_DIR = pathlib.Path(__file__).resolve().parents[3] / "roles" / "monitoring" / "files" / "rules"
CONFIG = "/etc/prometheus/alertmanager.yml"
PASSWORD_FILE = "/etc/prometheus/alertmanager-smtp-password"
SMTP_PASSWORD = "montest-smtp-secret-0123"  # molecule.yml's
# The alert of a stopped app server's /metrics (MonitoringTargetDown, `for: 10s` here).
APP_DOWN = {"alertname": "MonitoringTargetDown", "job": "koinonia-app", "instance": "mon-target"}


def test_alertmanager_listens_on_the_internal_address_only(host):
    assert host.service("prometheus-alertmanager").is_running
    assert host.service("prometheus-alertmanager").is_enabled
    assert listeners(host, 9093) == [f"{internal_ip(host)}:9093"]
    # No cluster port (it would listen on every address, TCP and UDP).
    assert listeners(host, 9094) == []
    assert host.check_output("ss -Hlun 'sport = :9094'") == ""


def test_prometheus_sends_its_alerts_to_alertmanager(host):
    active = api(host, "/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [a["url"] for a in active] == [f"http://{internal_ip(host)}:9093/api/v2/alerts"]


def test_alertmanager_config_validates_and_names_both_routes(host):
    out = host.check_output("amtool check-config %s 2>&1", CONFIG)
    assert "SUCCESS" in out, out
    config = host.file(CONFIG)
    assert (config.user, config.group, config.mode) == ("root", "prometheus", 0o640)
    assert "http://mon-target:9095/alertmanager" in config.content_string
    assert "oncall@koinonia.test" in config.content_string


def test_smtp_password_is_only_in_its_own_file(host):
    secret = host.file(PASSWORD_FILE)
    assert (secret.user, secret.group, secret.mode) == ("root", "prometheus", 0o640)
    assert secret.content_string == SMTP_PASSWORD
    assert SMTP_PASSWORD not in host.file(CONFIG).content_string
    assert SMTP_PASSWORD not in host.check_output("ps -eo args")


def test_alert_for_setting_replaces_only_the_named_alerts_wait(host):
    rules = {
        rule["name"]: rule
        for group in api(host, "/api/v1/rules?type=alert")["groups"]
        for rule in group["rules"]
    }
    assert rules["MonitoringTargetDown"]["duration"] == 10  # molecule.yml's, not the file's 2m
    assert rules["ExporterCannotReachService"]["duration"] == 120  # as files/rules/targets.yml
    deployed = host.file("/etc/prometheus/rules/koinonia-targets.yml").content_string
    assert "monitoring_prometheus_alert_for sets the `for:` of MonitoringTargetDown" in deployed
    # A file with no alert named is deployed byte for byte as promtool tests it.
    tested = (RULES_DIR / "app.yml").read_text()
    assert host.file("/etc/prometheus/rules/koinonia-app.yml").content_string == tested


def app_down_alerts(posts, status):
    """The app-down alerts with that status in the webhook's POSTs."""
    return [
        alert
        for post in posts
        for alert in post["body"]["alerts"]
        if alert["status"] == status and APP_DOWN.items() <= alert["labels"].items()
    ]


def app_down_mails(mails, status):
    """The mails about the app-down alert with that status ([FIRING:1] / [RESOLVED] ...)."""
    prefix = "[FIRING:" if status == "firing" else "[RESOLVED]"
    return [
        mail
        for mail in mails
        if mail["subject"].startswith(prefix)
        and "MonitoringTargetDown mon-target" in mail["subject"]
    ]


def wait_for(what, arrived, timeout):
    """Poll until arrived() is true, at most timeout seconds; the seconds it took."""
    start = time.monotonic()
    while not arrived():
        assert time.monotonic() - start < timeout, f"no {what} within {timeout} s"
        time.sleep(1)
    return time.monotonic() - start


def test_stopped_app_server_alert_reaches_webhook_and_mail_then_resolves(host, capsys):
    target = container("mon-target")
    firing = {a["labels"]["alertname"] for a in api(host, "/api/v1/alerts")["alerts"]}
    assert "MonitoringTargetDown" not in firing  # the alert is the stop's doing
    seen_posts = len(received(target, WEBHOOK_LOG))
    seen_mails = len(received(host, MAIL_LOG))

    def posts():
        return received(target, WEBHOOK_LOG)[seen_posts:]

    def mails():
        return received(host, MAIL_LOG)[seen_mails:]

    target.check_output("systemctl stop montest-app")
    try:
        webhook_firing = wait_for("firing webhook", lambda: app_down_alerts(posts(), "firing"), 150)
        mail_firing = wait_for("firing mail", lambda: app_down_mails(mails(), "firing"), 30)
    finally:
        target.check_output("systemctl start montest-app")
    webhook_resolved = wait_for(
        "resolved webhook", lambda: app_down_alerts(posts(), "resolved"), 120
    )
    mail_resolved = wait_for("resolved mail", lambda: app_down_mails(mails(), "resolved"), 30)
    with capsys.disabled():
        print(
            f"\n  app stopped -> firing at the webhook {webhook_firing:.0f} s, by mail "
            f"{mail_firing:.0f} s later; started -> resolved at the webhook "
            f"{webhook_resolved:.0f} s, by mail {mail_resolved:.0f} s later"
        )

    post = next(p for p in posts() if app_down_alerts([p], "firing"))
    assert post["path"] == "/alertmanager"
    assert post["body"]["receiver"] == "koinonia"
    mail = app_down_mails(mails(), "firing")[0]
    assert mail["authenticated"] is True
    assert mail["mail_from"] == "alertmanager@koinonia.test"
    assert mail["rcpt_tos"] == ["oncall@koinonia.test"]


def test_bad_alertmanager_config_fails_before_the_service_is_touched(host):
    before = host.file(CONFIG).sha256sum
    pid = host.check_output("systemctl show -P MainPID prometheus-alertmanager")
    run = run_playbook(
        "monitoring.yml",
        "--limit",
        "mon-prom",
        "--tags",
        "monitoring_alertmanager",
        "-e",
        "monitoring_alertmanager_group_wait=soon",
    )
    assert run.returncode != 0
    assert "Write alertmanager.yml (amtool check-config first)" in run.stdout
    assert "failed to validate" in run.stdout
    assert host.file(CONFIG).sha256sum == before
    assert host.check_output("systemctl show -P MainPID prometheus-alertmanager") == pid
    assert host.service("prometheus-alertmanager").is_running
