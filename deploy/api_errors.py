"""How the control API refuses: one JSON body for every error, and its OpenAPI description."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """What every refusal answers: one line saying what is wrong (and, for a request that
    does not validate, FastAPI's list of problems)."""

    error: str = Field(description="what is wrong, in one line")
    detail: list[dict[str, Any]] | None = Field(None, description="a request that did not validate: each problem")


class JSONAnswer(JSONResponse):
    """JSON that may hold lone surrogates: JSON's `\\ud800` escape decodes to one, and a
    refusal echoes what was sent. UTF-8 cannot write them, so they go out as the same
    escapes (valid JSON), where starlette's encoder raised and the caller got a 500."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8", "backslashreplace")


ERRORS = {
    400: "the request body cannot be read (not JSON, not UTF-8, not a bundle)",
    401: "missing or wrong bearer token",
    403: "the token's scope does not allow this call",
    404: "no such resource",
    409: "it conflicts with what is deployed",
    413: "the upload is larger than the mesh takes",
    415: "the request is not a CloudEvent in the HTTP binding (binary or structured mode)",
    422: "the request, or a spec in it, does not validate",
    502: "the function failed to handle the event",
    503: "the store failed (nothing changed), or the mesh is too busy for this now",
    504: "the function did not answer within its timeout",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each answering an ErrorBody."""
    return {status: {"model": ErrorBody, "description": ERRORS[status]} for status in statuses}


def answers(media_type: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route whose 200 is text of `media_type`; its errors stay JSON
    (with `response_class=Response`, which has no media type of its own to impose on them)."""
    return {200: {"content": {media_type: {"schema": {"type": "string"}}}}}
