#!/usr/bin/env bash
# Proves the collection ships: `ansible-galaxy collection build` makes a tarball that
# installs, its playbook runs as koinonia.platform.site, and its roles run by FQCN
# (each role's argument_specs run first and must refuse bad input with a clear message).
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ansible-galaxy collection build --force --output-path "$work/dist" . >/dev/null
tarball=$(ls "$work"/dist/koinonia-platform-*.tar.gz)
echo "built $(basename "$tarball") ($(du -h "$tarball" | cut -f1))"
# KOINONIA_EXTRA_COLLECTIONS: where the dependencies are when the ansible-core in use does
# not bring them (scripts/test-ansible-core-oldest.sh); none is fetched from Galaxy.
extra=${KOINONIA_EXTRA_COLLECTIONS:+:$KOINONIA_EXTRA_COLLECTIONS}
ANSIBLE_COLLECTIONS_PATH="$work/collections$extra" \
  ansible-galaxy collection install --force --no-deps -p "$work/collections" "$tarball" >/dev/null
export ANSIBLE_COLLECTIONS_PATH="$work/collections$extra" ANSIBLE_ROLES_PATH="$work/no-roles"
cd "$work"   # away from the checkout, so nothing resolves from its roles/ directory

ansible-playbook -i localhost, --syntax-check koinonia.platform.site >/dev/null
echo "koinonia.platform.site: syntax ok from the installed collection"

for role_dir in "$work/collections/ansible_collections/koinonia/platform/roles"/*/; do
  role=$(basename "$role_dir")
  cat > play.yml <<PLAY
- name: Run koinonia.platform.$role by its FQCN with a variable it must refuse
  hosts: localhost
  connection: local
  gather_facts: true   # some defaults are built from facts
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: koinonia.platform.$role
      vars:
        ${role}_definitely_not_an_option: 1
PLAY
  # Unknown variables are allowed by argument specs, so feed each role the first
  # validated option it declares with a value of the wrong type instead.
  bad=$(python3 - "$work/collections/ansible_collections/koinonia/platform/roles/$role/meta/argument_specs.yml" <<'PY'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))["argument_specs"]["main"]["options"]
# int and bool refuse a word; list and str would accept it (a string becomes a list).
typed = [n for n, o in spec.items() if o.get("type") in ("int", "bool")]
print(typed[0] if typed else "")
PY
)
  if [ -z "$bad" ]; then echo "role $role: no typed option to validate"; exit 1; fi
  sed -i "s/${role}_definitely_not_an_option: 1/$bad: \"not-a-valid-value-for-$bad\"/" play.yml
  # --check: should a role wrongly accept the value, it must not touch this machine.
  if out=$(ansible-playbook -i localhost, --check play.yml 2>&1); then
    echo "role $role accepted a bad value for $bad"; exit 1
  fi
  if ! { grep -q "Validating arguments against arg spec" <<<"$out" && grep -q "$bad" <<<"$out"; }; then
    echo "$out" | tail -n 20; echo "role $role did not refuse $bad through its argument_specs"; exit 1
  fi
  echo "koinonia.platform.$role: runs by FQCN, argument_specs refuse a bad $bad"
done
