"""Messaging: messages and their per-recipient deliveries, conversations, recurring messages
and the church's linked phone numbers.

Every row reaches a church (directly, or through its message/conversation), and services
always filter on it.  The unique constraints carry the idempotency rules in the database:
a member gets at most one delivery per message, and an ``Idempotency-Key`` names at most one
message per church.
"""

from __future__ import annotations

import enum

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model


class TargetType(enum.StrEnum):
    GROUP = "group"
    MEMBERS = "members"
    ALL = "all"


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"  # recorded, deliveries enqueued
    SENT = "sent"  # every delivery finished, at least one reached the provider
    FAILED = "failed"  # every delivery failed
    EMPTY = "empty"  # no opted-in recipient


class DeliveryStatus(enum.StrEnum):
    """One provider call per delivery (delivery/store.py holds the transitions):
    ``queued`` → ``sending`` (claimed by one job) → ``sent`` | ``failed`` | ``unknown``, and
    ``queued`` again only when the provider is known not to have accepted the text."""

    QUEUED = "queued"  # waiting for a job to claim it (not before next_attempt_at)
    SENDING = "sending"  # claimed: one job holds claim_token and may call the provider once
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider's status callback said delivered
    FAILED = "failed"  # permanent error, retries used up, opted out, or reported failed
    UNKNOWN = "unknown"  # the call may or may not have reached the provider: needs evidence


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class ScheduledStatus(enum.StrEnum):
    SCHEDULED = "scheduled"  # waiting for its time; may be cancelled
    SENDING = "sending"  # claimed by the cron: no longer cancellable
    SENT = "sent"  # its message is recorded (message_id)
    CANCELLED = "cancelled"
    FAILED = "failed"  # its targets were gone at send time (last_error)


class LinkStatus(enum.StrEnum):
    PENDING = "pending"
    LINKED = "linked"
    FAILED = "failed"


# The longest idempotency key a message keeps (its column's length).
MESSAGE_KEY_LENGTH = 255


class Message(Model):
    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Church", related_name="messages", on_delete=fields.CASCADE
    )
    content = fields.TextField()
    target_type = fields.CharEnumField(TargetType, max_length=16)
    target_ids = fields.JSONField(default=list)
    created_by: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.User", related_name="messages", null=True, on_delete=fields.SET_NULL
    )
    status = fields.CharEnumField(MessageStatus, max_length=16, default=MessageStatus.QUEUED)
    recipient_count = fields.IntField(default=0)
    # Client-chosen key of the POST that created it, and a hash of that request's body so
    # that reusing a key for a different message is refused instead of silently ignored.
    idempotency_key = fields.CharField(max_length=MESSAGE_KEY_LENGTH, null=True)
    request_hash = fields.CharField(max_length=64, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "message"
        unique_together = (("church", "idempotency_key"),)
        indexes = (Index(fields=("church_id", "created_at"), name="message_church_created_idx"),)


class Delivery(Model):
    id = fields.UUIDField(primary_key=True)
    message: fields.ForeignKeyRelation[Message] = fields.ForeignKeyField(
        "models.Message", related_name="deliveries", on_delete=fields.CASCADE
    )
    # Always the message's church (the one statement that inserts deliveries copies it), so
    # no foreign key of its own: deleting a church deletes its messages, and they their
    # deliveries (message_id's CASCADE). Its check cost each POST 100 lookups and KEY SHARE
    # locks of the one church row that every concurrent POST of the church locks too.
    church: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Church", related_name="deliveries", on_delete=fields.CASCADE, db_constraint=False
    )
    # Nullable so that deleting a member keeps the message's delivery history.
    member: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.Member", related_name="deliveries", null=True, on_delete=fields.SET_NULL
    )
    phone = fields.CharField(max_length=20)
    status = fields.CharEnumField(DeliveryStatus, max_length=16, default=DeliveryStatus.QUEUED)
    # Indexed only where set (delivery_provider_message_idx, migration 0006): a delivery has
    # none when it is recorded, so an insert skips that index.
    provider_message_id = fields.CharField(max_length=64, null=True)
    attempts = fields.IntField(default=0)
    last_error = fields.TextField(null=True)
    sent_at = fields.DatetimeField(null=True)
    # The claim of the job attempt allowed to call the provider (status ``sending``); results
    # are written only under the same token, so a second runner of a job cannot record over it.
    claim_token = fields.UUIDField(null=True)
    claimed_at = fields.DatetimeField(null=True)
    # A queued delivery is not claimed before this (the retry backoff).
    next_attempt_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "delivery"
        unique_together = (("message", "member"),)
        indexes = (
            Index(fields=("message_id", "status"), name="delivery_message_status_idx"),
            Index(fields=("church_id", "created_at"), name="delivery_church_created_idx"),
        )


class Conversation(Model):
    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Church", related_name="conversations", on_delete=fields.CASCADE
    )
    member: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Member", related_name="conversations", on_delete=fields.CASCADE
    )
    last_message_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "conversation"
        unique_together = (("church", "member"),)
        indexes = (
            Index(fields=("church_id", "last_message_at"), name="conversation_church_last_idx"),
        )


class ConversationMessage(Model):
    id = fields.UUIDField(primary_key=True)
    conversation: fields.ForeignKeyRelation[Conversation] = fields.ForeignKeyField(
        "models.Conversation", related_name="messages", on_delete=fields.CASCADE
    )
    direction = fields.CharEnumField(Direction, max_length=16)
    body = fields.TextField()
    # Outbound replies go through the delivery pipeline; inbound ones carry the provider's id.
    delivery: fields.ForeignKeyNullableRelation[Delivery] = fields.ForeignKeyField(
        "models.Delivery",
        related_name="conversation_messages",
        null=True,
        on_delete=fields.SET_NULL,
    )
    provider_message_id = fields.CharField(max_length=64, null=True, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "conversation_message"
        # From the original's index audit.
        indexes = (
            Index(fields=("direction", "conversation_id"), name="conv_msg_direction_conv_idx"),
            Index(fields=("conversation_id", "created_at"), name="conv_msg_conv_created_idx"),
        )


class RecurringMessage(Model):
    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Church", related_name="recurring_messages", on_delete=fields.CASCADE
    )
    content = fields.TextField()
    target_type = fields.CharEnumField(TargetType, max_length=16)
    target_ids = fields.JSONField(default=list)
    schedule = fields.CharField(max_length=100, description="cron expression, UTC")
    next_run_at = fields.DatetimeField()
    last_run_at = fields.DatetimeField(null=True)
    active = fields.BooleanField(default=True)
    created_by: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.User", related_name="recurring_messages", null=True, on_delete=fields.SET_NULL
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "recurring_message"
        indexes = (Index(fields=("active", "next_run_at"), name="recurring_due_idx"),)


class ScheduledMessage(Model):
    """A one-off message for a later time, sent once by the worker's minute job.

    services/scheduled.py holds its states and the cron's claim."""

    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Church", related_name="scheduled_messages", on_delete=fields.CASCADE
    )
    content = fields.TextField()
    target_type = fields.CharEnumField(TargetType, max_length=16)
    target_ids = fields.JSONField(default=list)
    send_at = fields.DatetimeField(description="UTC")
    timezone = fields.CharField(max_length=64, description="the church's zone when scheduled")
    status = fields.CharEnumField(ScheduledStatus, max_length=16, default=ScheduledStatus.SCHEDULED)
    message: fields.ForeignKeyNullableRelation[Message] = fields.ForeignKeyField(
        "models.Message", related_name="scheduled", null=True, on_delete=fields.SET_NULL
    )
    last_error = fields.TextField(null=True)
    created_by: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.User", related_name="scheduled_messages", null=True, on_delete=fields.SET_NULL
    )
    created_at = fields.DatetimeField(auto_now_add=True)
    sent_at = fields.DatetimeField(null=True)
    cancelled_at = fields.DatetimeField(null=True)

    class Meta:
        table = "scheduled_message"
        indexes = (
            Index(fields=("status", "send_at"), name="scheduled_due_idx"),
            Index(fields=("church_id", "send_at"), name="scheduled_church_send_idx"),
        )


class ChurchPhoneNumber(Model):
    id = fields.UUIDField(primary_key=True)
    church: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Church", related_name="phone_numbers", on_delete=fields.CASCADE
    )
    number = fields.CharField(max_length=20, unique=True, description="E.164")
    status = fields.CharEnumField(LinkStatus, max_length=16, default=LinkStatus.PENDING)
    attempts = fields.IntField(default=0)
    last_error = fields.TextField(null=True)
    last_attempt_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "church_phone_number"
        indexes = (Index(fields=("status", "attempts"), name="phone_number_status_idx"),)


class UnroutedInboundSms(Model):
    """A text to a number no church has: acknowledged to the provider, kept for operators,
    never attached to a church."""

    id = fields.UUIDField(primary_key=True)
    to_number = fields.CharField(max_length=32)
    from_number = fields.CharField(max_length=32)
    body = fields.TextField()
    provider_message_id = fields.CharField(max_length=64, null=True, unique=True)
    received_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "unrouted_inbound_sms"
        indexes = (Index(fields=("received_at",), name="unrouted_inbound_received_idx"),)
