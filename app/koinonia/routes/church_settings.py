"""The caller's church's settings: time zone and the answer to HELP/INFO texts."""

from __future__ import annotations

from pydantic import Field, field_validator
from quart import Blueprint
from quart_schema import document_response, tag, validate_request

from koinonia.schemas import ApiModel
from koinonia.services import church_settings
from koinonia.services.consent import MAX_HELP_TEXT
from koinonia.services.permissions import Permission
from koinonia.web.tenancy import current_church_id, require_permission

bp = Blueprint("church_settings", __name__, url_prefix="/api/church/settings")


class ChurchSettingsOut(ApiModel):
    name: str
    timezone: str = Field(description="IANA time zone; scheduled messages are entered in it")
    sms_help_text: str | None = Field(description="the answer to HELP/INFO; null: the default")
    effective_sms_help_text: str = Field(description="what a HELP/INFO text is answered with")


class ChurchSettingsPatch(ApiModel):
    timezone: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="IANA name, e.g. America/Chicago",
        json_schema_extra={"enum": [*church_settings.zone_names(), None]},
    )
    sms_help_text: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_HELP_TEXT,
        description="null: back to the default text, which names the church",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        return None if value is None else church_settings.validate_timezone(value)


@bp.get("")
@tag(["church"])
@require_permission(Permission.VIEW)
@document_response(ChurchSettingsOut, 200)
async def get_settings() -> dict:
    return church_settings.settings_json(await church_settings.get(current_church_id()))


@bp.patch("")
@tag(["church"])
@require_permission(Permission.MANAGE_SETTINGS)
@validate_request(ChurchSettingsPatch)
@document_response(ChurchSettingsOut, 200)
async def update_settings(data: ChurchSettingsPatch) -> dict:
    """Owners and admins. A field left out is unchanged; ``smsHelpText: null`` restores the
    default. Changing the time zone does not move messages already scheduled (they keep
    the instant they were given for)."""
    changes = data.model_dump(exclude_unset=True)
    if changes.get("timezone", "") is None:
        changes.pop("timezone")  # a zone cannot be cleared
    church = await church_settings.update(current_church_id(), changes)
    return church_settings.settings_json(church)
