from tortoise import migrations
from tortoise.migrations import operations as ops
from koinonia.models.core import ConsentSource
from koinonia.models.messaging import ScheduledStatus, TargetType
from orjson import loads
from tortoise.fields.base import OnDelete
from tortoise.fields.data import JSON_DUMPS
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0003_staff_and_numbers')]

    initial = False

    operations = [
        ops.CreateModel(
            name='ConsentEvent',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='consent_events', on_delete=OnDelete.CASCADE)),
                ('member', fields.ForeignKeyField('models.Member', source_field='member_id', db_constraint=True, to_field='id', related_name='consent_events', on_delete=OnDelete.CASCADE)),
                ('opted_in', fields.BooleanField()),
                ('source', fields.CharEnumField(description='STAFF: staff\nKEYWORD: keyword\nIMPORT: import', enum_type=ConsentSource, max_length=16)),
                ('changed_by', fields.ForeignKeyField('models.User', source_field='changed_by_id', null=True, db_constraint=True, to_field='id', related_name='consent_changes', on_delete=OnDelete.SET_NULL)),
                ('keyword', fields.CharField(null=True, description='the texted keyword', max_length=16)),
                ('reference', fields.CharField(null=True, max_length=64)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={'table': 'consent_event', 'app': 'models', 'indexes': [Index(fields=['member_id', 'created_at'], name='consent_member_created_idx')], 'pk_attr': 'id', 'table_description': "A change of a member's SMS consent, kept for good."},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='ScheduledMessage',
            fields=[
                ('id', fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True)),
                ('church', fields.ForeignKeyField('models.Church', source_field='church_id', db_constraint=True, to_field='id', related_name='scheduled_messages', on_delete=OnDelete.CASCADE)),
                ('content', fields.TextField(unique=False)),
                ('target_type', fields.CharEnumField(description='GROUP: group\nMEMBERS: members\nALL: all', enum_type=TargetType, max_length=16)),
                ('target_ids', fields.JSONField(default=list, encoder=JSON_DUMPS, decoder=loads)),
                ('send_at', fields.DatetimeField(description='UTC', auto_now=False, auto_now_add=False)),
                ('timezone', fields.CharField(description="the church's zone when scheduled", max_length=64)),
                ('status', fields.CharEnumField(default=ScheduledStatus.SCHEDULED, description='SCHEDULED: scheduled\nSENDING: sending\nSENT: sent\nCANCELLED: cancelled\nFAILED: failed', enum_type=ScheduledStatus, max_length=16)),
                ('message', fields.ForeignKeyField('models.Message', source_field='message_id', null=True, db_constraint=True, to_field='id', related_name='scheduled', on_delete=OnDelete.SET_NULL)),
                ('last_error', fields.TextField(null=True, unique=False)),
                ('created_by', fields.ForeignKeyField('models.User', source_field='created_by_id', null=True, db_constraint=True, to_field='id', related_name='scheduled_messages', on_delete=OnDelete.SET_NULL)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('sent_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('cancelled_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'scheduled_message', 'app': 'models', 'indexes': [Index(fields=['status', 'send_at'], name='scheduled_due_idx'), Index(fields=['church_id', 'send_at'], name='scheduled_church_send_idx')], 'pk_attr': 'id', 'table_description': "A one-off message for a later time, sent once by the worker's minute job."},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Church',
            name='sms_help_text',
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name='Church',
            name='timezone',
            field=fields.CharField(default='UTC', description='IANA time zone', max_length=64),
        ),
    ]
