#!/usr/bin/env bash
# Unit tests of the Prometheus alert rules the monitoring role deploys:
#   promtool check rules  roles/monitoring/files/rules/*.yml
#   promtool test rules   roles/monitoring/files/tests/*.yml   (synthetic series)
# promtool comes with Debian's "prometheus" package; it is installed when missing (root on
# Debian 12). Run from anywhere: `scripts/test-alert-rules.sh`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
role="$root/roles/monitoring"

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found: installing Debian's prometheus package (promtool only is used)"
    export DEBIAN_FRONTEND=noninteractive
    install_prometheus() {
        apt-get install -y -q --no-install-recommends prometheus
    }
    if ! install_prometheus; then
        apt-get update -q
        install_prometheus
    fi
fi

shopt -s nullglob
rules=("$role"/files/rules/*.yml)
tests=("$role"/files/tests/*.yml)
if ((${#rules[@]} == 0 || ${#tests[@]} == 0)); then
    echo "no rule files or no rule tests under $role/files" >&2
    exit 1
fi

echo "==> promtool check rules"
promtool check rules "${rules[@]}"

echo "==> promtool test rules"
# The tests name their rule files relative to themselves (../rules/...).
cd "$role/files/tests"
promtool test rules "${tests[@]##*/}"
