"""The OpenAPI document, exact enough to generate a client and to fuzz statefully.

quart-schema builds each operation from the route's decorators; this provider adds what it
cannot know: the error responses every operation can give (from its security, path, body
and query, plus the ones a route declares with ``document_errors``), ``Retry-After`` on 429
and 503, request bodies marked required, ``uuid`` path parameters, 204 answers
(``document_no_content``), the headers of idempotent sends (``document_idempotency``) and of
cached reads (``document_cache_status``), and links from each create operation to the
operations that take the id it answers with (``LINKS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart_schema import OpenAPIProvider
from werkzeug.routing import Rule, UUIDConverter

from koinonia.schemas import IDEMPOTENCY_KEY_PATTERN, ErrorResponse, ValidationErrorResponse

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
VALIDATION_ERROR_REF = {"$ref": "#/components/schemas/ValidationErrorResponse"}
REQUEST_MEDIA_ATTRIBUTE = "_koinonia_request_media"
ERRORS_ATTRIBUTE = "_koinonia_errors"
NO_CONTENT_ATTRIBUTE = "_koinonia_no_content"
TEXT_RESPONSE_ATTRIBUTE = "_koinonia_text_response"
IDEMPOTENCY_ATTRIBUTE = "_koinonia_idempotency"
CACHE_STATUS_ATTRIBUTE = "_koinonia_cache_status"

F = TypeVar("F", bound=Callable[..., Any])

RETRY_AFTER_HEADER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 0},
    }
}

IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Any client-chosen key, at most 255 characters: a repeated request with the same key "
        "creates nothing and answers what the first one recorded (`Idempotent-Replayed`)"
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": IDEMPOTENCY_KEY_PATTERN,
    },
}
IDEMPOTENT_REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": (
            "`true` when this answer repeats the one recorded for an earlier request with the "
            "same `Idempotency-Key` (nothing new was created or sent); absent otherwise"
        ),
        "schema": {"type": "string", "enum": ["true"]},
    }
}
CACHE_STATUS_HEADER = {
    "X-Cache": {
        "description": (
            "Where the page came from: `HIT` the cache, `MISS` the database (then cached), "
            "`BYPASS` the database with the cache not consulted, `ERROR` the database because "
            "the cache was unreachable"
        ),
        "schema": {"type": "string", "enum": ["HIT", "MISS", "BYPASS", "ERROR"]},
    }
}

# What each error status means on this API (the body's ``error.code`` names the case).
ERROR_DESCRIPTIONS = {
    400: "Malformed request (`bad_request`): a body that is not JSON, a bad header",
    401: "Not authenticated (`unauthorized`): no, an expired or a revoked session",
    403: "Not allowed (`forbidden`, `csrf_rejected`, `invalid_signature`)",
    404: "Not found (`not_found` or a named case), or not in the caller's church",
    409: "Conflict with the current state (`conflict` or a named case)",
    413: "Body too large (`payload_too_large`)",
    415: "Unsupported content type (`unsupported_media_type`)",
    422: "Validation failed (`validation_error`): `details` lists each field's error",
    429: "Too many requests (`rate_limited`): wait `Retry-After` seconds",
    503: (
        "A service this request needs is unavailable (`service_unavailable`): try again "
        "after `Retry-After` seconds"
    ),
}
QUEUE_FULL_DESCRIPTION = (
    " or the SMS queue is at its memory high-water mark (`queue_full`, nothing recorded; "
    "`details.retryAfter` repeats the header)"
)


def _id_links(expression: str, parameter: str, *targets: str) -> dict[str, dict[str, Any]]:
    """Links passing the id at ``expression`` as path ``parameter`` of each target."""
    return {
        target: {"operationId": target, "parameters": {parameter: expression}} for target in targets
    }


# Create operation -> links (named by their target) from its success answer to the
# operations that take what it created. Schemathesis' stateful phase follows them.
LINKS: dict[str, dict[str, dict[str, Any]]] = {
    "post_create_member": _id_links(
        "$response.body#/id",
        "member_id",
        "get_get_member",
        "patch_update_member",
        "delete_delete_member",
        "get_consent_history",
    ),
    "post_create_group": _id_links(
        "$response.body#/id",
        "group_id",
        "get_get_group",
        "patch_update_group",
        "delete_delete_group",
        "post_add_group_members",
        "delete_remove_group_members",
    ),
    "post_create_message": _id_links("$response.body#/id", "message_id", "get_get_message"),
    "post_create_recurring": _id_links(
        "$response.body#/id", "recurring_id", "patch_update_recurring", "delete_delete_recurring"
    ),
    "post_create_scheduled": _id_links(
        "$response.body#/id", "scheduled_id", "get_get_scheduled", "post_cancel_scheduled"
    ),
    "post_add_number": _id_links("$response.body#/id", "number_id", "delete_remove_number"),
    "post_admin_add_number": _id_links("$response.body#/id", "number_id", "delete_remove_number"),
    "post_create_invite": {
        **_id_links("$response.body#/id", "invite_id", "delete_cancel_invite"),
        # The token is in this answer only; the rest of the body is the invitee's choice.
        "post_accept_invite": {
            "operationId": "post_accept_invite",
            "requestBody": {"token": "$response.body#/token"},
        },
    },
    "post_accept_invite": _id_links(
        "$response.body#/user/id",
        "user_id",
        "patch_change_role",
        "delete_remove_staff",
        "post_transfer_ownership",
    ),
    "get_list_conversations": _id_links(
        "$response.body#/data/0/id",
        "conversation_id",
        "get_conversation_messages",
        "post_reply",
    ),
}


def document_request_media(media: dict[str, dict[str, Any]]) -> Callable[[F], F]:
    """Document request bodies quart-schema cannot describe (a CSV file, an upload): OpenAPI
    media type objects by content type, added to the operation's requestBody."""

    def decorator(func: F) -> F:
        setattr(func, REQUEST_MEDIA_ATTRIBUTE, media)
        return func

    return decorator


def document_errors(*statuses: int, queue_full: bool = False) -> Callable[[F], F]:
    """Error statuses a route answers beyond those the provider derives (409 for a
    conflict, 404 for an id in the body, ...); ``queue_full``: its 503 may be that."""

    def decorator(func: F) -> F:
        setattr(func, ERRORS_ATTRIBUTE, (set(statuses), queue_full))
        return func

    return decorator


def document_no_content(func: F) -> F:
    """The route answers 204 without a body."""
    setattr(func, NO_CONTENT_ATTRIBUTE, True)
    return func


def document_idempotency(func: F) -> F:
    """The route honours an ``Idempotency-Key`` header and marks a replayed answer."""
    setattr(func, IDEMPOTENCY_ATTRIBUTE, True)
    return func


def document_cache_status(func: F) -> F:
    """The route's success answer says in ``X-Cache`` whether it came from the cache."""
    setattr(func, CACHE_STATUS_ATTRIBUTE, True)
    return func


def document_text_response(status: int, content_type: str, description: str) -> Callable[[F], F]:
    """The route answers ``status`` with a text body of ``content_type`` (TwiML, ...)."""

    def decorator(func: F) -> F:
        setattr(func, TEXT_RESPONSE_ATTRIBUTE, (status, content_type, description))
        return func

    return decorator


def _error_response(status: int, *, queue_full: bool = False) -> dict[str, Any]:
    description = ERROR_DESCRIPTIONS[status] + (QUEUE_FULL_DESCRIPTION if queue_full else "")
    schema = VALIDATION_ERROR_REF if status == 422 else ERROR_REF
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if status in (429, 503):
        response["headers"] = RETRY_AFTER_HEADER
    return response


class KoinoniaOpenAPIProvider(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        document = super().schema()
        operations = {
            operation["operationId"]: operation
            for path_item in document["paths"].values()
            for operation in path_item.values()
        }
        self._name_schemas(document)
        for source_id, links in LINKS.items():
            source = operations[source_id]
            success = next(code for code in source["responses"] if code.startswith("2"))
            source["responses"][success]["links"] = links
        return document

    @staticmethod
    def _name_schemas(document: dict[str, Any]) -> None:
        """Request and response models as named components, not inline copies: one model
        per name for a client generator, whichever operations and statuses share it."""
        components = document["components"]["schemas"]
        for path_item in document["paths"].values():
            for operation in path_item.values():
                bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
                for body in bodies:
                    for media in body.get("content", {}).values():
                        schema = media["schema"]
                        name = schema.get("title")
                        if name is None or schema.get("type") != "object":
                            continue
                        if components.setdefault(name, schema) != schema:
                            raise RuntimeError(f"two models are named {name}")
                        media["schema"] = {"$ref": f"#/components/schemas/{name}"}

    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        func = self._app.view_functions[rule.endpoint]
        media = getattr(func, REQUEST_MEDIA_ATTRIBUTE, None)
        declared, queue_full = getattr(func, ERRORS_ATTRIBUTE, (set(), False))
        for path, path_item in paths.items():
            for method, operation in path_item.items():
                if media:
                    body = operation.setdefault("requestBody", {"content": {}})
                    body["content"] = {**body["content"], **media}
                # quart-schema puts response headers inside "content"; they belong beside it.
                responses: dict[str, Any] = {}
                for code, value in operation.get("responses", {}).items():
                    headers = value.get("content", {}).pop("headers", None)
                    if headers:
                        value["headers"] = headers
                    # Status codes as strings: mixed int/str keys break sorted JSON output.
                    responses[str(code)] = value
                if getattr(func, NO_CONTENT_ATTRIBUTE, False):
                    responses["204"] = {"description": "Done; no content"}
                text = getattr(func, TEXT_RESPONSE_ATTRIBUTE, None)
                if text is not None:
                    status, content_type, description = text
                    responses[str(status)] = {
                        "description": description,
                        "content": {content_type: {"schema": {"type": "string"}}},
                    }
                operation["responses"] = responses
                operation["parameters"] = [
                    self._typed_path_parameter(parameter, rule)
                    for parameter in operation.get("parameters", [])
                ]
                success = next(code for code in responses if code.startswith("2"))
                if getattr(func, IDEMPOTENCY_ATTRIBUTE, False):
                    operation["parameters"].append(IDEMPOTENCY_KEY_PARAMETER)
                    responses[success].setdefault("headers", {}).update(IDEMPOTENT_REPLAYED_HEADER)
                if getattr(func, CACHE_STATUS_ATTRIBUTE, False):
                    responses[success].setdefault("headers", {}).update(CACHE_STATUS_HEADER)
                statuses = set(declared) | self._derived_errors(path, method, operation)
                for status in sorted(statuses):
                    error = _error_response(status, queue_full=queue_full)
                    responses.setdefault(str(status), error)
                responses.setdefault(
                    "default",
                    {
                        "description": "Any other error, in the same shape (see error.code)",
                        "content": {"application/json": {"schema": ERROR_REF}},
                    },
                )
        components.update(self._error_components())
        return paths, components

    @staticmethod
    def _derived_errors(path: str, method: str, operation: dict[str, Any]) -> set[int]:
        statuses: set[int] = set()
        if operation.get("security"):
            statuses |= {401, 403}
        parameters = operation.get("parameters", [])
        if any(p["in"] == "path" for p in parameters):
            statuses.add(404)
        body = operation.get("requestBody")
        if body is not None:
            body["required"] = True
            statuses |= {400, 413}
            if "application/json" in body["content"]:
                statuses.add(422)
        if any(p["in"] == "query" for p in parameters):
            statuses.add(422)
        if path.startswith("/api/"):
            # Every API route needs the database or Redis, and sits behind a rate limit.
            statuses |= {429, 503}
        return statuses

    @staticmethod
    def _typed_path_parameter(parameter: dict[str, Any], rule: Rule) -> dict[str, Any]:
        converter = rule._converters.get(parameter["name"]) if parameter["in"] == "path" else None
        if isinstance(converter, UUIDConverter):
            parameter["schema"] = {"type": "string", "format": "uuid"}
        return parameter

    @staticmethod
    def _error_components() -> dict[str, Any]:
        components: dict[str, Any] = {}
        for model in (ErrorResponse, ValidationErrorResponse):
            schema = model.model_json_schema(
                by_alias=True, ref_template="#/components/schemas/{model}"
            )
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
        return components
