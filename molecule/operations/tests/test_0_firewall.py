"""The tiers are closed to each other on the deployed stack (roles/firewall, enabled in this
scenario as in production): each service port answers the tier that uses it and drops the
others. The connection attempts are bounded (3 s) and stay inside the scenario's network."""

import pytest
from conftest import APPS, DB, LB, REDIS, docker_host


def reaches(src: str, dst: str, port: int) -> bool:
    return docker_host(src).run(f"timeout 3 bash -c '</dev/tcp/{dst}/{port}'").rc == 0


@pytest.mark.parametrize(
    ("service", "dst", "port", "allowed", "refused"),
    [
        ("API", APPS[0], 3000, LB, DB),
        ("PgBouncer", DB, 6432, APPS[0], LB),
        ("Redis", REDIS, 6379, APPS[1], LB),
        ("PostgreSQL", DB, 5432, APPS[2], LB),
    ],
)
def test_0_service_port_answers_its_tier_and_drops_the_others(service, dst, port, allowed, refused):
    assert reaches(allowed, dst, port), f"{service}: {allowed} -> {dst}:{port} refused"
    assert not reaches(refused, dst, port), f"{service}: {refused} -> {dst}:{port} got through"
