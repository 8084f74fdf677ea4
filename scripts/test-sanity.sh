#!/usr/bin/env bash
# ansible-test sanity over the collection as it ships: the tarball `ansible-galaxy collection
# build` makes, unpacked where ansible-test wants a collection
# (<tmp>/ansible_collections/koinonia/platform/), run locally (no containers) on the Python of
# the dev venv and the ansible-test of its ansible-core. Accepted findings are listed, each
# with its reason, in tests/sanity/ignore-<ansible-core major.minor>.txt.
#
# Every test runs. Only the Python versions are restricted: --python runs the
# per-version tests (compile, import) on the venv's Python alone, as the others are not
# installed here.
#
# ansible-test puts each test's requirements in a venv of its own, under $HOME/.ansible/test;
# HOME points into .cache so those venvs are kept between runs (the first run makes them:
# about two minutes more, from the package index). Into each venv it bootstraps pip with a
# get-pip script from ci-files.testing.ansible.com, which this machine cannot reach. When that
# download fails, the cache gets a bootstrap that does the same with Python's own ensurepip,
# then pip installs the requested pip version and packages from the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
core=$(python3 -c 'from ansible.release import __version__; print(__version__)')
ignores=tests/sanity/ignore-${core%.*}.txt
[[ -f $ignores ]] || { echo "$ignores is missing: ansible-core $core needs its own list"; exit 1; }

export HOME=$root/.cache/ansible-test-home
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',\$/\1/p" \
  "$(python3 -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py")
get_pip=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
if [[ ! -s $get_pip ]]; then
  mkdir -p "$(dirname "$get_pip")"
  if ! curl -fsS --max-time 20 -o "$get_pip" "https://ci-files.testing.ansible.com/ansible-test/get-pip-$pip_version.py"; then
    echo "get-pip $pip_version is out of reach: ensurepip, then pip from the package index, bootstraps instead"
    cat >"$get_pip" <<'PY'
"""get-pip's job (ansible-test runs it in an empty venv with pip==VERSION and get-pip's
--no-setuptools/--no-wheel): Python's bundled pip first, then the requested packages."""
import subprocess
import sys

packages = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
# In a child process: ensurepip clears pip's configuration (PIP_CONFIG_FILE) for its process.
subprocess.check_call([sys.executable, "-m", "ensurepip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *packages])
PY
  fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ansible-galaxy collection build --force --output-path "$work/dist" . >/dev/null
collection=$work/ansible_collections/koinonia/platform
mkdir -p "$collection"
tar -xzf "$work"/dist/koinonia-platform-*.tar.gz -C "$collection"
[[ -f $collection/$ignores ]] || { echo "$ignores is not in the built collection"; exit 1; }
echo "ansible-test sanity: koinonia.platform as built, ansible-core $core, Python $python"
cd "$collection"
ansible-test sanity --local --python "$python" --color no
