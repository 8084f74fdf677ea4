"""Fault 8: the provider accepts each send and then hangs past the client's timeout. The
worker cannot know whether the text went out, so each delivery becomes `unknown` and is
never sent again; the provider's own record (Twilio's Messages list, looked up by the
minute's in-doubt sweep) settles it as `sent`. Counted at the provider: one call each.

The stack texts through the log provider, which answers at once. For this fault one app
server's worker talks Twilio's API to a stand-in on its own loopback
(bench/fake_twilio.py --hang: records the message, answers HANG seconds later), and the
other workers are stopped, so that every send and every lookup of the run goes there."""

import json
import subprocess

from stackclient import wait_for

from .conftest import (
    APPS,
    PROJECT_DIR,
    SETTLE_DEADLINE,
    Outcome,
    bulk_group,
    deliveries,
    post_messages,
    provider_calls,
    status_count,
    status_counts,
    unit,
)

MEMBERS = 150  # two chunks; the in-doubt sweep looks up 200 deliveries a minute
PORT = 18990  # the stand-in, on the app server's loopback
# Between accepting a send and answering it: well past the Twilio client's 10 s timeout
# (koinonia.delivery.sms.twilio), well inside the job's 60 s (two waves of 50 sends).
HANG = 30
FAKE = "/usr/local/lib/koinonia-fault8-twilio.py"
FAKE_UNIT = "koinonia-fault8-twilio"
DROP_IN = "/run/systemd/system/koinonia-worker.service.d/fault8-twilio.conf"
ENV_FILE = "/run/koinonia-fault8-twilio.env"
# Read after the role's environment file, so these win (systemd: a later file overrides).
TWILIO_ENV = {
    "KOINONIA_SMS_PROVIDER": "twilio",
    "KOINONIA_TWILIO_ACCOUNT_SID": "AC00000000000000000000000000000008",
    "KOINONIA_TWILIO_AUTH_TOKEN": "fault8-stand-in-token",
    "KOINONIA_TWILIO_FROM_NUMBER": "+15005550006",
    "KOINONIA_TWILIO_BASE_URL": f"http://127.0.0.1:{PORT}",
}
SENT_DEADLINE = 180  # both chunks through their timeouts, with a loaded machine's slack


def stand_in_calls(host) -> dict:
    """The stand-in's counts: calls, deliveries, repeated, perDelivery (token -> calls)."""
    out = host.check_output(
        "curl -s --max-time 5 'http://127.0.0.1:%s/calls?per=delivery'", str(PORT)
    )
    return json.loads(out)


def restart_worker(host) -> None:
    before = unit(host, "koinonia-worker")["MainPID"]
    host.check_output("systemctl daemon-reload && systemctl restart koinonia-worker")
    wait_for(
        lambda: (
            (u := unit(host, "koinonia-worker"))["ActiveState"] == "active"
            and u["MainPID"] not in ("0", before)
        ),
        90,
        what="koinonia-worker restarted",
    )


def test_8_provider_hanging_after_accepting_leaves_unknown_settled_by_its_record_never_resent(
    apps, db, redis, owner_token, healthy_stack
):
    victim, others = APPS[0], [a for a in APPS if a != APPS[0]]
    host = apps[victim]
    gid, tag = bulk_group(db, owner_token, MEMBERS)
    subprocess.run(
        ["docker", "cp", str(PROJECT_DIR / "bench" / "fake_twilio.py"), f"{victim}:{FAKE}"],
        check=True,
    )
    for name in others:
        apps[name].check_output("systemctl stop koinonia-worker")
    try:
        host.check_output(
            "systemd-run --unit=%s --collect /usr/bin/python3 %s %s 0 --hang %s",
            FAKE_UNIT,
            FAKE,
            str(PORT),
            str(HANG),
        )
        wait_for(
            lambda: host.run("curl -sf --max-time 2 http://127.0.0.1:%s/calls", str(PORT)).rc == 0,
            30,
            what="the provider stand-in listening",
        )
        lines = [f"{name}={value}" for name, value in TWILIO_ENV.items()]
        host.check_output(
            "umask 077 && printf '%%s\\n' " + " ".join(["%s"] * len(lines)) + " > %s",
            *lines,
            ENV_FILE,
        )
        host.check_output(
            "mkdir -p %s && printf '[Service]\\nEnvironmentFile=%%s\\n' %s > %s",
            DROP_IN.rsplit("/", 1)[0],
            ENV_FILE,
            DROP_IN,
        )
        restart_worker(host)

        [message_id] = post_messages(owner_token, gid, tag, 1)
        # Every send times out after the stand-in accepted it: no delivery waits or is being
        # sent any more, and none was queued again for a retry. (The minute's sweep may
        # already have settled some of the `unknown` ones.)
        wait_for(
            lambda: status_count(db, [message_id], ("queued", "sending")) == 0,
            SENT_DEADLINE,
            step=2,
            what="every delivery past its provider call",
        )
        counts = status_counts(db, [message_id])
        after_calls = {status: counts.get(status, 0) for status in ("unknown", "sent", "failed")}
        called = stand_in_calls(host)
        print(f"fault 8: after the calls {after_calls}; the stand-in: {called['calls']} calls")
        assert after_calls["failed"] == 0, after_calls
        assert after_calls["unknown"] + after_calls["sent"] == MEMBERS, after_calls
        # The minute's sweep finds each text in the provider's list: `sent`, not sent again.
        wait_for(
            lambda: status_count(db, [message_id], ("unknown", "queued", "sending")) == 0,
            SETTLE_DEADLINE,
            step=3,
            what="every `unknown` delivery settled by the provider's record",
        )
        called = stand_in_calls(host)
    finally:
        host.run("systemctl stop %s", FAKE_UNIT)
        host.run("rm -f %s %s", DROP_IN, ENV_FILE)
        restart_worker(host)
        for name in others:
            apps[name].check_output("systemctl start koinonia-worker")

    rows = deliveries(db, [message_id])
    per_delivery = {
        token.removeprefix("delivery-"): n for token, n in called["perDelivery"].items()
    }
    log_calls = provider_calls(redis, list(rows))  # the stack's own provider: none expected
    calls = {d: per_delivery.get(d, 0) + log_calls[d] for d in rows}
    outcome = Outcome(
        "deliveries",
        len(rows),
        sum(1 for d in rows if calls[d]),
        lost=sum(1 for d, (status, _p, _a) in rows.items() if status != "sent" or not calls[d]),
        duplicated=sum(max(0, n - 1) for n in calls.values()),
        calls=sum(calls.values()),
        unknown=sum(1 for status, _p, _a in rows.values() if status == "unknown"),
    )
    print(f"fault 8 (provider accepts, then hangs {HANG} s, on {victim}): {outcome}")
    assert len(rows) == MEMBERS
    assert called["calls"] == MEMBERS and called["repeated"] == 0, called
    assert sum(log_calls.values()) == 0, log_calls
    assert outcome.lost == 0 and outcome.duplicated == 0 and outcome.unknown == 0, outcome
    # Each `sent` carries the stand-in's own message id, found by the lookup.
    assert all(p.startswith("SM") and a == 1 for _s, p, a in rows.values()), list(rows.items())[:5]
