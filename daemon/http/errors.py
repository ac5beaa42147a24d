"""Errors the HTTP API answers with, in OpenAI's shape:
`{"error": {"message", "type", "code", "param"}}`.

    status  type                    code (examples)
    400     invalid_request_error   invalid_json, missing_model, invalid_body,
                                    invalid_value / invalid_type (messages, input, stream, tools),
                                    invalid_http (aiohttp's parser refused it: daemon/http/connection.py)
    401     authentication_error    missing_api_key, invalid_api_key
    403     permission_error        model_not_allowed, cross_origin,
                                    permission_denied (an app key on /admin/* or /metrics)
    404     invalid_request_error   model_not_found, not_found
    413     invalid_request_error   request_too_large
    408     invalid_request_error   request_timeout (the client was too slow)
    431     invalid_request_error   request_header_too_large (the request line or a header field)
    429/503 no_deployment_available (routing found nothing usable)
    500     server_error            internal_error (a handler failed; never for what a client sent)
    504     timeout                 timeouts.total passed
"""

from __future__ import annotations

from aiohttp import web

from gatewayd.adapters.base import openai_error_body

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 405: "invalid_request_error", 408: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_error", 502: "upstream_error",
               503: "service_unavailable", 504: "timeout"}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.status, self.code, self.message, self.param)

    def response(self, extra_headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=self.status, body=self.body(), content_type="application/json",
                            headers={**self.headers, **(extra_headers or {})})


def error_body(status: int, code: str | None, message: str, param: str | None = None) -> bytes:
    type_ = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return openai_error_body(message, type_, code, param)
