from tortoise import migrations
from tortoise.migrations import operations as ops
from koinonia.models.messaging import DeliveryStatus
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.AlterField(
            model_name='Delivery',
            name='status',
            field=fields.CharEnumField(default=DeliveryStatus.QUEUED, description='QUEUED: queued\nSENDING: sending\nSENT: sent\nDELIVERED: delivered\nFAILED: failed\nUNKNOWN: unknown', enum_type=DeliveryStatus, max_length=16),
        ),
        ops.AddField(
            model_name='Delivery',
            name='claim_token',
            field=fields.UUIDField(null=True),
        ),
        ops.AddField(
            model_name='Delivery',
            name='claimed_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Delivery',
            name='next_attempt_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        # Deliveries recorded before this migration are due now; then partial indexes
        # (Tortoise's Index has no WHERE), so each sweep reads only the few rows in its
        # state, not the whole delivery history.
        ops.RunSQL(
            [
                "UPDATE delivery SET next_attempt_at = updated_at "
                "WHERE status = 'queued' AND next_attempt_at IS NULL",
                # Stalled sweep: queued deliveries due long ago (their enqueue was lost).
                "CREATE INDEX delivery_queued_due_idx ON delivery (next_attempt_at) "
                "WHERE status = 'queued'",
                # Stale claims and reconciliation: sending / unknown deliveries by claim age.
                "CREATE INDEX delivery_in_doubt_idx ON delivery (claimed_at) "
                "WHERE status IN ('sending', 'unknown')",
            ],
            reverse_sql=[
                "DROP INDEX delivery_queued_due_idx",
                "DROP INDEX delivery_in_doubt_idx",
            ],
        ),
    ]
