#!/usr/bin/env python3
"""Build (or reuse) the release bundle of the koinonia service on the Ansible controller.

Run by roles/app (``run_once`` + ``delegate_to: localhost``). Prints one JSON object:

    {"changed": bool, "name": ..., "version": ..., "release": "<version>-<hash>",
     "source_hash": ..., "git_commit": ..., "git_dirty": bool, "bundle": "/path.tar.gz"}

* The release name is ``<version>-<first 12 hex of a SHA-256>`` over the application's source
  files and the requirements lock: the same code gives the same release, so a second deploy
  of unchanged code changes nothing on the hosts.
* Dependencies: ``pip download --only-binary=:all: --no-deps --require-hashes -r <lock>`` for
  the TARGETS' interpreter and platform (not the controller's), cached under
  ``<cache>/deps-<lock hash>-py<version>``: a file whose SHA-256 is not in the lock fails here.
* The application wheel: ``pip wheel --no-deps`` of a copy of the sources (the checkout is
  not written to), cached under ``<cache>/app-<source hash>``.
* Before bundling, pip resolves ``<name>==<version>`` against the bundle alone, for the
  targets' platform, with ``--no-index``: a lock that no longer satisfies the application's
  dependencies fails HERE, on the controller, with pip's explanation.
* The bundle ``<cache>/<release>-py<python version>.tar.gz`` is what is copied to the hosts:
  ``wheels/*.whl`` and ``requirements.txt``, the lock without pip, which the hosts install with
  ``--require-hashes`` before the app's own wheel (``--no-deps``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

EXCLUDED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist"}


def _fail(message: str) -> None:
    print(json.dumps({"failed": True, "msg": message}))
    sys.exit(1)


def _source_files(source: Path, paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for rel in paths:
        top = source / rel
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            for path in sorted(top.rglob("*")):
                parts = set(path.relative_to(source).parts)
                if not path.is_file() or parts & EXCLUDED_PARTS:
                    continue
                if path.suffix in {".pyc", ".pyo"} or any(p.endswith(".egg-info") for p in parts):
                    continue
                files.append(path)
        else:
            _fail(f"source path {top} does not exist")
    return sorted(set(files))


def _hash_files(source: Path, files: list[Path], lock: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    digest.update(b"lock\0" + hashlib.sha256(lock.read_bytes()).digest())
    return digest.hexdigest()


def _git(source: Path, *args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(source), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout.strip()


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        _fail(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def _build_isolation(source: Path) -> list[str]:
    """``--no-build-isolation`` when this Python already has what [build-system] requires (no
    download per build); otherwise pip builds in an isolated environment of its own. An older
    setuptools than the floor (Debian 12's 66 cannot read the SPDX license string) must not be
    used just because it is there."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return []
    build = tomllib.loads((source / "pyproject.toml").read_text())["build-system"]
    for line in build.get("requires", []):
        requirement = Requirement(line)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return []
        if not requirement.specifier.contains(installed, prereleases=True):
            return []
    return ["--no-build-isolation"]


def _without(lock_text: str, name: str) -> str:
    """The lock (pip's requirements format, continuation lines included) minus one package."""
    entries, current = [], ""
    for line in lock_text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            entries.append(current.strip())
            current = ""
    keep = [e for e in entries if not e.lower().startswith(f"{name}==")]
    return "\n".join(keep) + "\n"


def _target_args(args: argparse.Namespace) -> list[str]:
    out = ["--only-binary=:all:", "--python-version", args.python_version]
    out += ["--implementation", args.implementation]
    for platform in args.platform:
        out += ["--platform", platform]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, type=Path)
    parser.add_argument("--path", action="append", required=True, help="source path to hash")
    parser.add_argument(
        "--git", type=Path, help="checkout to read the commit from (default: source)"
    )
    parser.add_argument("--lock", required=True, type=Path)
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--python-version", required=True)
    parser.add_argument("--implementation", default="cp")
    parser.add_argument("--platform", action="append", required=True)
    args = parser.parse_args()

    source = args.source.resolve()
    if not args.lock.is_file():
        _fail(f"requirements lock {args.lock} not found")
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    files = _source_files(source, args.path)
    source_hash = _hash_files(source, files, args.lock)
    release = f"{version}-{source_hash[:12]}"
    lock_hash = hashlib.sha256(args.lock.read_bytes()).hexdigest()[:16]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]

    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    # Several deploys may build at once on one controller (make test runs scenarios side
    # by side): one builder at a time, so the next finds the cache filled instead of racing
    # it to rename the same directories.
    lock = (cache / ".build.lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    changed = False

    deps = cache / f"deps-{lock_hash}-py{args.python_version}"
    if not deps.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=".deps-", dir=cache))
        _run(
            [
                *pip,
                "download",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                *_target_args(args),
                "-d",
                str(tmp),
                "-r",
                str(args.lock),
            ],
            "downloading the pinned dependencies",
        )
        tmp.rename(deps)
        changed = True

    appdir = cache / f"app-{source_hash[:16]}"
    if not appdir.is_dir():
        with tempfile.TemporaryDirectory(prefix=".app-", dir=cache) as work:
            staging = Path(work) / "src"
            for path in files:
                dest = staging / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, dest)
            out = Path(work) / "wheel"
            isolation = _build_isolation(source)
            _run(
                [*pip, "wheel", "--quiet", "--no-deps", *isolation, "-w", str(out), str(staging)],
                "building the application wheel",
            )
            out.rename(appdir)
        changed = True

    bundle = cache / f"{release}-py{args.python_version}.tar.gz"
    if not bundle.is_file():
        with tempfile.TemporaryDirectory(prefix=".check-", dir=cache) as target:
            _run(
                [
                    *pip,
                    "install",
                    "--quiet",
                    "--dry-run",
                    "--no-index",
                    "--ignore-installed",
                    "--find-links",
                    str(deps),
                    "--find-links",
                    str(appdir),
                    *_target_args(args),
                    "--target",
                    target,
                    f"{name}=={version}",
                ],
                f"resolving {name}=={version} from the wheelhouse alone (is {args.lock} "
                "up to date with pyproject.toml? see roles/app/README.md)",
            )
        tmp_bundle = bundle.with_suffix(".tmp")
        requirements = _without(args.lock.read_text(), "pip").encode()
        with tarfile.open(tmp_bundle, "w:gz") as tar:
            for wheel_file in sorted([*deps.glob("*.whl"), *appdir.glob("*.whl")]):
                tar.add(wheel_file, arcname=f"wheels/{wheel_file.name}")
            info = tarfile.TarInfo("requirements.txt")
            info.size, info.mode = len(requirements), 0o644
            tar.addfile(info, io.BytesIO(requirements))
        tmp_bundle.rename(bundle)
        changed = True

    checkout = (args.git or source).resolve()
    commit = _git(checkout, "rev-parse", "HEAD")
    dirty = bool(_git(checkout, "status", "--porcelain", "--", *args.path)) if commit else False
    print(
        json.dumps(
            {
                "changed": changed,
                "name": name,
                "version": version,
                "release": release,
                "source_hash": source_hash,
                "git_commit": commit or "unknown",
                "git_dirty": dirty,
                "bundle": str(bundle),
            }
        )
    )


if __name__ == "__main__":
    main()
