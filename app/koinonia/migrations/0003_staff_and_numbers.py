from tortoise import migrations
from tortoise.migrations import operations as ops
from koinonia.models.core import Role
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0002_delivery_claims')]

    initial = False

    operations = [
        ops.CreateModel(
            name='StaffInvite',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='staff_invites', on_delete=OnDelete.CASCADE)),
                ('email', fields.CharField(max_length=320)),
                ('role', fields.CharEnumField(description='OWNER: owner\nADMIN: admin\nSTAFF: staff', enum_type=Role, max_length=16)),
                ('token_hash', fields.CharField(unique=True, max_length=64)),
                ('invited_by', fields.ForeignKeyField('models.User', source_field='invited_by_id', null=True, db_constraint=True, to_field='id', related_name='invites_sent', on_delete=OnDelete.SET_NULL)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'staff_invite', 'app': 'models', 'unique_together': (('church', 'email'),), 'pk_attr': 'id', 'table_description': "An invitation to join a church's staff: one-time, expiring, named by a token whose"},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='UnroutedInboundSms',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('to_number', fields.CharField(max_length=32)),
                ('from_number', fields.CharField(max_length=32)),
                ('body', fields.TextField(unique=False)),
                ('provider_message_id', fields.CharField(null=True, unique=True, max_length=64)),
                ('received_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'unrouted_inbound_sms', 'app': 'models', 'indexes': [Index(fields=['received_at'], name='unrouted_inbound_received_idx')], 'pk_attr': 'id', 'table_description': 'A text to a number no church has: acknowledged to the provider, kept for operators,'},
            bases=['Model'],
        ),
    ]
