"""Mitogen's linear strategy for the Molecule scenarios, with every process free to run on
either core.

Mitogen pins its processes on machines with 2 or 3 CPUs: the connection multiplexer to CPU 0,
Ansible's top level, its workers and their children (the `docker exec` of each connection) to
CPU 1 (ansible_mitogen/affinity.py, FixedPolicy, "tested on an otherwise idle 16 thread
machine"). Here two or three scenarios run side by side on 2 cores, and their tests time
failovers: pinned, every scenario's Ansible queued on one core while the containers had both.
Its base Policy places nothing, and the kernel schedules every process on both cores.
"""

import ansible_mitogen.affinity

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()

# Imported after the policy is replaced: Mitogen's processes read it when they start.
from ansible_mitogen.plugins.strategy.mitogen_linear import StrategyModule  # noqa: E402

__all__ = ["StrategyModule"]
