from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from koinonia.models.core import Role
from koinonia.models.messaging import DeliveryStatus, Direction, LinkStatus, MessageStatus, TargetType
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='Church',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=200)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'church', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ChurchPhoneNumber',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='phone_numbers', on_delete=OnDelete.CASCADE)),
                ('number', fields.CharField(unique=True, description='E.164', max_length=20)),
                ('status', fields.CharEnumField(default=LinkStatus.PENDING, description='PENDING: pending\nLINKED: linked\nFAILED: failed', enum_type=LinkStatus, max_length=16)),
                ('attempts', fields.IntField(default=0)),
                ('last_error', fields.TextField(null=True, unique=False)),
                ('last_attempt_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'church_phone_number', 'app': 'models', 'indexes': [Index(fields=['status', 'attempts'], name='phone_number_status_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Group',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='groups', on_delete=OnDelete.CASCADE)),
                ('name', fields.CharField(max_length=200)),
                ('description', fields.TextField(default='', unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'member_group', 'app': 'models', 'unique_together': (('church', 'name'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Member',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='members', on_delete=OnDelete.CASCADE)),
                ('first_name', fields.CharField(max_length=100)),
                ('last_name', fields.CharField(default='', max_length=100)),
                ('phone', fields.CharField(description='E.164', max_length=20)),
                ('email', fields.CharField(null=True, max_length=320)),
                ('opt_in_sms', fields.BooleanField(default=True)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'member', 'app': 'models', 'unique_together': (('church', 'phone'),), 'indexes': [Index(fields=['church_id', 'opt_in_sms'], name='member_church_opt_in_idx'), Index(fields=['created_at'], name='member_created_at_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Conversation',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='conversations', on_delete=OnDelete.CASCADE)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', db_constraint=True, to_field='id', related_name='conversations', on_delete=OnDelete.CASCADE)),
                ('last_message_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'conversation', 'app': 'models', 'unique_together': (('church', 'member'),), 'indexes': [Index(fields=['church_id', 'last_message_at'], name='conversation_church_last_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='GroupMembership',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('group', fields.ForeignKeyField('models.Group', source_field='group_id', db_constraint=True, to_field='id', related_name='memberships', on_delete=OnDelete.CASCADE)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', db_constraint=True, to_field='id', related_name='memberships', on_delete=OnDelete.CASCADE)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'group_membership', 'app': 'models', 'unique_together': (('group', 'member'),), 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='User',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', null=True, db_constraint=True, to_field='id', related_name='users', on_delete=OnDelete.CASCADE)),
                ('email', fields.CharField(unique=True, max_length=320)),
                ('password_hash', fields.CharField(max_length=255)),
                ('first_name', fields.CharField(default='', max_length=100)),
                ('last_name', fields.CharField(default='', max_length=100)),
                ('role', fields.CharEnumField(default=Role.STAFF, description='OWNER: owner\nADMIN: admin\nSTAFF: staff', enum_type=Role, max_length=16)),
                ('is_operator', fields.BooleanField(default=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'app_user', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Message',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='messages', on_delete=OnDelete.CASCADE)),
                ('content', fields.TextField(unique=False)),
                ('target_type', fields.CharEnumField(description='GROUP: group\nMEMBERS: members\nALL: all', enum_type=TargetType, max_length=16)),
                ('target_ids', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('created_by', fields.ForeignKeyField('models.User', source_field='created_by_id', null=True, db_constraint=True, to_field='id', related_name='messages', on_delete=OnDelete.SET_NULL)),
                ('status', fields.CharEnumField(default=MessageStatus.QUEUED, description='QUEUED: queued\nSENT: sent\nFAILED: failed\nEMPTY: empty', enum_type=MessageStatus, max_length=16)),
                ('recipient_count', fields.IntField(default=0)),
                ('idempotency_key', fields.CharField(null=True, max_length=255)),
                ('request_hash', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'message', 'app': 'models', 'unique_together': (('church', 'idempotency_key'),), 'indexes': [Index(fields=['church_id', 'created_at'], name='message_church_created_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Delivery',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('message', fields.ForeignKeyField('models.Message', source_field='message_id', db_constraint=True, to_field='id', related_name='deliveries', on_delete=OnDelete.CASCADE)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='deliveries', on_delete=OnDelete.CASCADE)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', null=True, db_constraint=True, to_field='id', related_name='deliveries', on_delete=OnDelete.SET_NULL)),
                ('phone', fields.CharField(max_length=20)),
                ('status', fields.CharEnumField(default=DeliveryStatus.QUEUED, description='QUEUED: queued\nSENT: sent\nDELIVERED: delivered\nFAILED: failed', enum_type=DeliveryStatus, max_length=16)),
                ('provider_message_id', fields.CharField(null=True, db_index=True, max_length=64)),
                ('attempts', fields.IntField(default=0)),
                ('last_error', fields.TextField(null=True, unique=False)),
                ('sent_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'delivery', 'app': 'models', 'unique_together': (('message', 'member'),), 'indexes': [Index(fields=['message_id', 'status'], name='delivery_message_status_idx'), Index(fields=['church_id', 'created_at'], name='delivery_church_created_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ConversationMessage',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('conversation', fields.ForeignKeyField('models.Conversation', source_field='conversation_id', db_constraint=True, to_field='id', related_name='messages', on_delete=OnDelete.CASCADE)),
                ('direction', fields.CharEnumField(description='INBOUND: inbound\nOUTBOUND: outbound', enum_type=Direction, max_length=16)),
                ('body', fields.TextField(unique=False)),
                ('delivery', fields.ForeignKeyField('models.Delivery', source_field='delivery_id', null=True, db_constraint=True, to_field='id', related_name='conversation_messages', on_delete=OnDelete.SET_NULL)),
                ('provider_message_id', fields.CharField(null=True, unique=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'conversation_message', 'app': 'models', 'indexes': [Index(fields=['direction', 'conversation_id'], name='conv_msg_direction_conv_idx'), Index(fields=['conversation_id', 'created_at'], name='conv_msg_conv_created_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='RecurringMessage',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='recurring_messages', on_delete=OnDelete.CASCADE)),
                ('content', fields.TextField(unique=False)),
                ('target_type', fields.CharEnumField(description='GROUP: group\nMEMBERS: members\nALL: all', enum_type=TargetType, max_length=16)),
                ('target_ids', fields.JSONField(default=list, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('schedule', fields.CharField(description='cron expression, UTC', max_length=100)),
                ('next_run_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('last_run_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('active', fields.BooleanField(default=True)),
                ('created_by', fields.ForeignKeyField('models.User', source_field='created_by_id', null=True, db_constraint=True, to_field='id', related_name='recurring_messages', on_delete=OnDelete.SET_NULL)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'recurring_message', 'app': 'models', 'indexes': [Index(fields=['active', 'next_run_at'], name='recurring_due_idx')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
