"""Tenancy and people: churches, their users, members and groups.

Every tenant-owned row carries ``church``; services always filter on it, so a user never
reads or writes another church's rows.
"""

from __future__ import annotations

import enum

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    STAFF = "staff"


class Church(Model):
    id = fields.UUIDField(primary_key=True)
    name = fields.CharField(max_length=200)
    # Scheduled messages are entered in this zone (validated with zoneinfo).
    timezone = fields.CharField(max_length=64, default="UTC", description="IANA time zone")
    # The answer to HELP/INFO; null: services/consent.py's default naming the church.
    sms_help_text = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "church"


class User(Model):
    id = fields.UUIDField(primary_key=True)
    # Null only for platform operators created from the CLI without a church.
    church: fields.ForeignKeyNullableRelation[Church] = fields.ForeignKeyField(
        "models.Church", related_name="users", null=True, on_delete=fields.CASCADE
    )
    email = fields.CharField(max_length=320, unique=True)
    password_hash = fields.CharField(max_length=255)
    first_name = fields.CharField(max_length=100, default="")
    last_name = fields.CharField(max_length=100, default="")
    role = fields.CharEnumField(Role, max_length=16, default=Role.STAFF)
    is_operator = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "app_user"


class Member(Model):
    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation[Church] = fields.ForeignKeyField(
        "models.Church", related_name="members", on_delete=fields.CASCADE
    )
    first_name = fields.CharField(max_length=100)
    last_name = fields.CharField(max_length=100, default="")
    phone = fields.CharField(max_length=20, description="E.164")
    email = fields.CharField(max_length=320, null=True)
    opt_in_sms = fields.BooleanField(default=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "member"
        unique_together = (("church", "phone"),)
        # From the original's index audit: recipient selection and newest-first listing.
        indexes = (
            Index(fields=("church_id", "opt_in_sms"), name="member_church_opt_in_idx"),
            Index(fields=("created_at",), name="member_created_at_idx"),
            # The member list: a church's newest first, keyset-paged on (created_at, id),
            # read in index order instead of sorting every member of the church.
            Index(fields=("church_id", "created_at", "id"), name="member_church_listing_idx"),
        )


class ConsentSource(enum.StrEnum):
    STAFF = "staff"  # a user of the church set it (member created or edited)
    KEYWORD = "keyword"  # the member texted STOP/START (or a synonym)
    IMPORT = "import"  # a member import created the member or opted it out


class ConsentEvent(Model):
    """A change of a member's SMS consent, kept for good.

    A new member's first consent is one too: carriers may ask a church to show when and how
    someone opted in or out."""

    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation[Church] = fields.ForeignKeyField(
        "models.Church", related_name="consent_events", on_delete=fields.CASCADE
    )
    member: fields.ForeignKeyRelation[Member] = fields.ForeignKeyField(
        "models.Member", related_name="consent_events", on_delete=fields.CASCADE
    )
    opted_in = fields.BooleanField()
    source = fields.CharEnumField(ConsentSource, max_length=16)
    changed_by: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="consent_changes", null=True, on_delete=fields.SET_NULL
    )
    keyword = fields.CharField(max_length=16, null=True, description="the texted keyword")
    # The inbound text's provider id, or the import's id.
    reference = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "consent_event"
        indexes = (Index(fields=("member_id", "created_at"), name="consent_member_created_idx"),)


class Group(Model):
    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation[Church] = fields.ForeignKeyField(
        "models.Church", related_name="groups", on_delete=fields.CASCADE
    )
    name = fields.CharField(max_length=200)
    description = fields.TextField(default="")
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "member_group"
        unique_together = (("church", "name"),)


class GroupMembership(Model):
    id = fields.UUIDField(primary_key=True)
    group: fields.ForeignKeyRelation[Group] = fields.ForeignKeyField(
        "models.Group", related_name="memberships", on_delete=fields.CASCADE
    )
    member: fields.ForeignKeyRelation[Member] = fields.ForeignKeyField(
        "models.Member", related_name="memberships", on_delete=fields.CASCADE
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "group_membership"
        unique_together = (("group", "member"),)


class StaffInvite(Model):
    """An invitation to join a church's staff: one-time, expiring, named by a token whose
    SHA-256 alone is stored (a database dump yields no usable invite)."""

    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation[Church] = fields.ForeignKeyField(
        "models.Church", related_name="staff_invites", on_delete=fields.CASCADE
    )
    email = fields.CharField(max_length=320)
    role = fields.CharEnumField(Role, max_length=16)
    token_hash = fields.CharField(max_length=64, unique=True)
    invited_by: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="invites_sent", null=True, on_delete=fields.SET_NULL
    )
    expires_at = fields.DatetimeField()
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "staff_invite"
        # One open invite per person and church: inviting again replaces the token.
        unique_together = (("church", "email"),)
