"""OpenAPI document tweaks: every operation documents the one error shape, and routes that
do not declare a response model still get a valid (non-empty) responses object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart_schema import OpenAPIProvider
from werkzeug.routing import Rule

from koinonia.schemas import ErrorResponse

ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
REQUEST_MEDIA_ATTRIBUTE = "_koinonia_request_media"

F = TypeVar("F", bound=Callable[..., Any])


def document_request_media(media: dict[str, dict[str, Any]]) -> Callable[[F], F]:
    """Document request bodies quart-schema cannot describe (a CSV file, an upload): OpenAPI
    media type objects by content type, added to the operation's requestBody."""

    def decorator(func: F) -> F:
        setattr(func, REQUEST_MEDIA_ATTRIBUTE, media)
        return func

    return decorator


class KoinoniaOpenAPIProvider(OpenAPIProvider):
    def build_paths(self, rule: Rule) -> tuple[dict, dict]:
        paths, components = super().build_paths(rule)
        media = getattr(self._app.view_functions[rule.endpoint], REQUEST_MEDIA_ATTRIBUTE, None)
        for path_item in paths.values():
            for operation in path_item.values():
                if media:
                    body = operation.setdefault("requestBody", {"content": {}})
                    body["content"] = {**body["content"], **media}
                    body["required"] = True
                # Status codes as strings: mixed int/str keys break sorted JSON output.
                responses: dict[str, Any] = {
                    str(code): value for code, value in operation.get("responses", {}).items()
                }
                operation["responses"] = responses
                # "2XX", not "200": routes without a response model answer 201 or 202 too
                # (register, create), and a client must accept what they send.
                if not any(code.startswith("2") for code in responses):
                    responses["2XX"] = {"description": "Success"}
                responses.setdefault(
                    "default",
                    {
                        "description": "Error (see error.code)",
                        "content": {"application/json": {"schema": ERROR_REF}},
                    },
                )
        components.update(self._error_components())
        return paths, components

    @staticmethod
    def _error_components() -> dict[str, Any]:
        schema = ErrorResponse.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        )
        definitions = schema.pop("$defs", {})
        return {"ErrorResponse": schema, **definitions}
