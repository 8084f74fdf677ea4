"""Every blueprint the app factory registers, in order.

To add a route module: define ``bp = Blueprint(...)`` in it and append one import + one list
entry here.
"""

from __future__ import annotations

from quart import Blueprint

from koinonia.routes.admin_cache import bp as admin_cache_bp
from koinonia.routes.admin_queue import bp as admin_queue_bp
from koinonia.routes.analytics import bp as analytics_bp
from koinonia.routes.auth import bp as auth_bp
from koinonia.routes.church_settings import bp as church_settings_bp
from koinonia.routes.conversations import bp as conversations_bp
from koinonia.routes.groups import bp as groups_bp
from koinonia.routes.health import bp as health_bp
from koinonia.routes.member_import import bp as member_import_bp
from koinonia.routes.members import bp as members_bp
from koinonia.routes.messages import bp as messages_bp
from koinonia.routes.phone_numbers import admin_bp as admin_phone_numbers_bp
from koinonia.routes.phone_numbers import bp as phone_numbers_bp
from koinonia.routes.recurring import bp as recurring_bp
from koinonia.routes.scheduled import bp as scheduled_bp
from koinonia.routes.staff import bp as staff_bp
from koinonia.routes.webhooks import bp as webhooks_bp
from koinonia.routes.ws import bp as ws_bp

BLUEPRINTS: list[Blueprint] = [
    health_bp,
    auth_bp,
    members_bp,
    member_import_bp,
    groups_bp,
    analytics_bp,
    admin_cache_bp,
    messages_bp,
    conversations_bp,
    recurring_bp,
    scheduled_bp,
    church_settings_bp,
    staff_bp,
    phone_numbers_bp,
    admin_phone_numbers_bp,
    webhooks_bp,
    admin_queue_bp,
    ws_bp,
]
