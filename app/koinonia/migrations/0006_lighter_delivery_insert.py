from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0005_member_listing_index')]

    initial = False

    operations = [
        ops.AlterField(
            model_name='Delivery',
            name='church',
            field=fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=False, to_field='id', related_name='deliveries', on_delete=OnDelete.CASCADE),
        ),
        ops.AlterField(
            model_name='Delivery',
            name='provider_message_id',
            field=fields.CharField(null=True, max_length=64),
        ),
        # Recording a message inserts 100 deliveries for a 100-member group in one statement;
        # these two made each row cost more than it needs (issue 12):
        # - delivery.church_id is always its message's church_id, and a church's deletion
        #   reaches its deliveries through message (ON DELETE CASCADE both), so its foreign
        #   key only added a check per row that KEY SHARE-locks the one church row every
        #   concurrent POST of the church locks too. The AlterField above changes the model's
        #   state only: it leaves the constraint in place.
        # - provider_message_id is set when the provider accepts the text, never at insert:
        #   indexed only where set, an insert skips the index. The status-callback lookup
        #   (provider_message_id = $1) implies IS NOT NULL, so it still uses it.
        ops.RunSQL(
            [
                "ALTER TABLE delivery DROP CONSTRAINT IF EXISTS delivery_church_id_fkey",
                "CREATE INDEX delivery_provider_message_idx ON delivery (provider_message_id) "
                "WHERE provider_message_id IS NOT NULL",
            ],
            reverse_sql=[
                "DROP INDEX delivery_provider_message_idx",
                "ALTER TABLE delivery ADD CONSTRAINT delivery_church_id_fkey "
                "FOREIGN KEY (church_id) REFERENCES church (id) ON DELETE CASCADE",
            ],
        ),
    ]
