"""Section 6 (deploy): wall time of a first full site.yml converge and of an idempotent re-run.

scripts/up.sh records its site.yml run in .cache/bench/deploy.json: `first_converge` when
that `make up` started any container (fresh hosts), `rerun` otherwise. With --deploy the
bench also runs `ansible-playbook site.yml -i inventories/local` itself against the running
stack, times it and counts changed tasks from the recap (an idempotent re-run changes none).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

from bench.common import OUT_DIR, ROOT, UP_FIRST, Section, StackNotUp, log, require_stack, table

DEPLOY_JSON = OUT_DIR / "deploy.json"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def recorded() -> dict:
    try:
        return json.loads(DEPLOY_JSON.read_text())
    except (OSError, ValueError):
        return {}


def rerun(timeout: float) -> dict:
    require_stack(need_lb=False)
    log("deploy: ansible-playbook site.yml -i inventories/local (idempotent re-run)")
    started = time.monotonic()
    out = subprocess.run(
        ["ansible-playbook", "site.yml", "-i", "inventories/local"],
        cwd=ROOT,
        env=os.environ | {"ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    hosts = {}
    for line in out.stdout.splitlines():
        m = RECAP.match(line.strip())
        if m:
            hosts[m.group(1)] = {
                "ok": int(m.group(2)),
                "changed": int(m.group(3)),
                "unreachable": int(m.group(4)),
                "failed": int(m.group(5)),
            }
    (OUT_DIR / "deploy-rerun.log").write_text(out.stdout + out.stderr)
    result = {
        "seconds": round(seconds, 1),
        "exit_code": out.returncode,
        "changed": sum(h["changed"] for h in hosts.values()),
        "failed": sum(h["failed"] + h["unreachable"] for h in hosts.values()),
        "tasks_ok": sum(h["ok"] for h in hosts.values()),
        "hosts": hosts,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": "bench/deploy.py",
    }
    data = recorded()
    data["rerun_by_bench"] = result
    DEPLOY_JSON.parent.mkdir(parents=True, exist_ok=True)
    DEPLOY_JSON.write_text(json.dumps(data, indent=2))
    log(f"deploy: re-run {result['seconds']} s, {result['changed']} changed, rc {out.returncode}")
    return result


def run(args) -> Section:
    section = Section("deploy", "Deploy: site.yml wall time")
    if args.deploy:
        try:
            rerun(args.deploy_timeout)
        except StackNotUp:
            raise
    data = recorded()
    labels = {
        "first_converge": "first full converge (make up on fresh containers)",
        "rerun": "re-run by make up (containers already up)",
        "rerun_by_bench": "idempotent re-run (make bench --deploy)",
    }
    for key, label in labels.items():
        if key in data:
            section.rows.append({"run": label, "key": key, **data[key]})
    if not section.rows:
        section.skipped = f"no deploy recorded in {DEPLOY_JSON.relative_to(ROOT)}: {UP_FIRST}"
    section.notes += [
        "Wall time of `ansible-playbook site.yml -i inventories/local` against the six local "
        "containers (make up), recorded by scripts/up.sh; the first converge includes package "
        "installs from the containers' apt cache and the app's wheel build.",
    ]
    return section.finish()


def markdown(section: Section) -> list[str]:
    return table(
        ["run", "seconds", "changed tasks", "exit code", "finished (UTC)"],
        [
            [r["run"], r["seconds"], r.get("changed", "-"), r["exit_code"], r.get("finished_at")]
            for r in section.rows
        ],
    )
