"""The gateway's own errors: a status, a code and a message, written in OpenAI's shape
`{"error": {"message", "type", "code", "param"}}` here, and by each client format's codec on
its endpoints (`/v1/messages` answers them in Anthropic's shape).

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

from gatewayd.daemon.formats.openai import error_body as openai_error_body

# the kind of error (core/failures.ERROR_KINDS) each status of the gateway's own tells of
ERROR_KINDS = {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found",
               405: "invalid_request", 408: "invalid_request", 413: "invalid_request", 429: "rate_limit",
               502: "upstream", 503: "unavailable", 504: "timeout"}


def error_kind(status: int) -> str:
    return ERROR_KINDS.get(status, "server" if status >= 500 else "invalid_request")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self, request_id: str | None = None) -> bytes:
        return error_body(self.status, self.code, self.message, self.param, request_id)

    def response(self, extra_headers: dict[str, str] | None = None, request_id: str | None = None) -> web.Response:
        return web.Response(status=self.status, body=self.body(request_id), content_type="application/json",
                            headers={**self.headers, **(extra_headers or {})})


def error_body(status: int, code: str | None, message: str, param: str | None = None,
               request_id: str | None = None) -> bytes:
    """An error of the gateway's own in OpenAI's shape: what every endpoint outside a client
    format's answers with (paths, /admin/*, /metrics, the HTTP parser's refusals)."""
    return openai_error_body(message, error_kind(status), code, param, request_id)
