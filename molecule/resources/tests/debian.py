"""What the test hosts run, by Debian release: the tests' own table of what each release
packages, so a role that installs something else fails them."""

# Debian's major version -> the PostgreSQL and Redis majors it packages.
POSTGRESQL_MAJOR = {"12": "15", "13": "17"}
REDIS_MAJOR = {"12": "7", "13": "8"}


def debian_major(host) -> str:
    """The Debian major version of a Testinfra host ("12", "13")."""
    return host.file("/etc/debian_version").content_string.strip().split(".")[0]


def postgresql_major(host) -> str:
    return POSTGRESQL_MAJOR[debian_major(host)]


def postgresql_unit(host) -> str:
    return f"postgresql@{postgresql_major(host)}-main"
