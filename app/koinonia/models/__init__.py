"""ORM models. ``core`` (tenancy, people) and ``messaging`` load into one Tortoise app "models"."""

from koinonia.models.core import Church, Group, GroupMembership, Member, Role, StaffInvite, User

__all__ = ["Church", "Group", "GroupMembership", "Member", "Role", "StaffInvite", "User"]
