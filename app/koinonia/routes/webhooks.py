"""Provider webhooks (Twilio format): inbound texts and delivery status callbacks.

Every request must carry a valid ``X-Twilio-Signature`` for the public URL it was sent to;
anything unsigned or badly signed is refused with 403 before it is read any further. A
signed callback is handled once: its replay is acknowledged and ignored
(``stores/replay_claims.py`` says why).
"""

from __future__ import annotations

from xml.sax.saxutils import escape as xml_escape

from pydantic import BaseModel, ConfigDict
from quart import Blueprint, Response, request
from quart_schema import DataSource, document_headers, document_request, tag

from koinonia.delivery import messaging
from koinonia.delivery.sms.signature import SIGNATURE_HEADER, compute_signature, validate_signature
from koinonia.errors import BadRequest, Forbidden
from koinonia.openapi import document_errors, document_no_content, document_text_response
from koinonia.services import conversations
from koinonia.stores import replay_claims
from koinonia.web.state import get_state

bp = Blueprint("webhooks", __name__, url_prefix="/api/webhooks/sms")


class TwilioSignature(BaseModel):
    x_twilio_signature: str


class _TwilioForm(BaseModel):
    # Documentation only: the fields are read after the signature check, which covers every
    # field Twilio sends (so the form is never validated before it is known to be Twilio's).
    model_config = ConfigDict(extra="allow")


class InboundSms(_TwilioForm):
    MessageSid: str
    From: str
    To: str
    Body: str = ""


class SmsStatus(_TwilioForm):
    MessageSid: str
    MessageStatus: str
    ErrorCode: str | None = None


EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


def twiml(reply: str | None) -> str:
    """Empty TwiML, or one that has Twilio answer the sender (from the number texted)."""
    if reply is None:
        return EMPTY_TWIML
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Message>{xml_escape(reply)}</Message></Response>"
    )


async def _signed_form() -> tuple[dict[str, str], str]:
    settings = get_state().settings
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    # Twilio signs the URL it called: our public base URL, this path and the query string.
    url = settings.public_base_url.rstrip("/") + request.path
    if request.query_string:
        url += "?" + request.query_string.decode()
    form = await request.form
    if not validate_signature(token, url, form, request.headers.get(SIGNATURE_HEADER)):
        raise Forbidden("Missing or invalid webhook signature", code="invalid_signature")
    # The replay key: our own signature over exactly what was signed, so that another
    # spelling of the same header value cannot pass for a new callback.
    return {key: form.get(key, "") for key in form}, compute_signature(token, url, form)


def _required(form: dict[str, str], *names: str) -> None:
    missing = [name for name in names if not form.get(name)]
    if missing:
        raise BadRequest("Missing webhook fields", details={"missing": missing})


@bp.post("/inbound")
@tag(["webhooks"])
@document_request(InboundSms, source=DataSource.FORM)
@document_headers(TwilioSignature)
@document_text_response(200, "text/xml", "TwiML: empty, or a <Message> answering HELP/INFO")
@document_errors(400, 403)
async def inbound() -> Response:
    """A text to one of the churches' numbers (Twilio's format).

    Answers empty TwiML, or for HELP/INFO a TwiML ``<Message>`` with the church's help text.
    STOP/START (and synonyms) change the member's opt-in before anything else.
    """
    form, signature = await _signed_form()
    _required(form, "From", "To")
    state = get_state()
    async with replay_claims.claim_once(
        state.redis, signature, state.settings.webhook_replay_ttl_seconds
    ) as new:
        reply = None
        if new:
            result = await conversations.handle_inbound(
                from_number=form["From"],
                to_number=form["To"],
                body=form.get("Body", ""),
                message_sid=form.get("MessageSid") or form.get("SmsSid"),
                redis=state.redis,
                page_cache=state.cache,
            )
            reply = result.reply
    return Response(twiml(reply), status=200, content_type="text/xml")


@bp.post("/status")
@tag(["webhooks"])
@document_request(SmsStatus, source=DataSource.FORM)
@document_headers(TwilioSignature)
@document_no_content
@document_errors(400, 403)
async def status() -> Response:
    """Delivery status of a text we sent (``?deliveryId=`` as set in StatusCallback)."""
    form, signature = await _signed_form()
    _required(form, "MessageSid", "MessageStatus")
    state = get_state()
    async with replay_claims.claim_once(
        state.redis, signature, state.settings.webhook_replay_ttl_seconds
    ) as new:
        if new:
            await messaging.apply_status_callback(
                provider_message_id=form["MessageSid"],
                provider_status=form["MessageStatus"],
                error_code=form.get("ErrorCode") or None,
                delivery_id=request.args.get("deliveryId"),
                redis=state.redis,
            )
    return Response(status=204)
