#!/usr/bin/env bash
# The collection on the OLDEST ansible-core that meta/runtime.yml admits (make test runs the
# rest on the newest, pinned in pyproject.toml): a venv with just that ansible-core, then
# scripts/test-collection.sh (build, install, the playbook's syntax, every role by FQCN).
# The community collections come from the dev venv's ansible package, as Galaxy is not
# reachable from our machines.
set -euo pipefail
cd "$(dirname "$0")/.."
oldest=$(sed -n 's/^requires_ansible: *">=\([0-9.]*\)".*/\1/p' meta/runtime.yml)
[ -n "$oldest" ] || { echo "meta/runtime.yml: no requires_ansible \">=X.Y.Z\" range"; exit 1; }
venv=.cache/ansible-core-$oldest
if [ ! -x "$venv/bin/ansible-playbook" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$oldest" pyyaml
fi
site_collections=$(.venv/bin/python -c 'import ansible_collections, os; print(os.path.dirname(ansible_collections.__path__[0]))')
export PATH="$PWD/$venv/bin:$PATH" KOINONIA_EXTRA_COLLECTIONS="$site_collections"
echo "$(ansible --version | head -n 1) (the oldest meta/runtime.yml admits)"
scripts/test-collection.sh
