"""Who may do what in a church: the one table of role -> permissions.

Every church route names the permission it needs (``tenancy.require_permission``); the
staff rules (who may make or unmake an owner) read the same table, and the tenancy test
walks the route map against it.
"""

from __future__ import annotations

import enum

from koinonia.models.core import Role


class Permission(enum.StrEnum):
    # Read members and their consent history, groups, messages, scheduled and recurring
    # messages, conversations, numbers, the church's settings.
    VIEW = "view"
    # Messages, conversation replies, recurring and scheduled messages (and their cancelling).
    SEND_MESSAGES = "send_messages"
    MANAGE_MEMBERS = "manage_members"  # create, change, delete and import members; groups
    SEE_ANALYTICS = "see_analytics"
    MANAGE_STAFF = "manage_staff"  # invites, staff list, admin/staff roles, removals
    MANAGE_OWNERS = "manage_owners"  # make, demote or remove an owner; transfer ownership
    MANAGE_NUMBERS = "manage_numbers"  # the church's own phone numbers
    MANAGE_SETTINGS = "manage_settings"  # the church's time zone and HELP/INFO answer


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.ADMIN: frozenset(
        {
            Permission.VIEW,
            Permission.SEND_MESSAGES,
            Permission.MANAGE_MEMBERS,
            Permission.SEE_ANALYTICS,
            Permission.MANAGE_STAFF,
            Permission.MANAGE_SETTINGS,
        }
    ),
    Role.STAFF: frozenset({Permission.VIEW, Permission.SEND_MESSAGES}),
}


def allows(role: str, permission: Permission) -> bool:
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:  # a role this code does not know: nothing
        return False
