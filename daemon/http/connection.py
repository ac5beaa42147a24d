"""aiohttp's low-level server, with the requests its HTTP parser refuses answered in OpenAI's
error shape (`{"error": {"message", "type", "code", "param"}}`, daemon/http/errors.py).

A request line or header aiohttp cannot parse, a header over its size limit, or a broken
chunked body never reaches a handler: aiohttp answers it itself, in plain text, from
`RequestHandler.handle_error` (also its answer to an exception a handler let through).
`GatewayServer` builds its connections from `JsonErrorConnection`, whose `handle_error`
keeps aiohttp's logging and closing and answers the way every other error of the API does:

    what aiohttp refused                        status  code
    a request line or header field too long     431     request_header_too_large
    anything else it cannot parse               400     invalid_http
    a handler's unexpected exception            500     internal_error
    a handler timing out                        504     timeout

The daemon (server.py) and the tests' `gateway` fixture (tests/conftest.py) both serve on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gatewayd.daemon.http.errors import error_body
from gatewayd.daemon.http.requestid import HEADER, IDS, USABLE, IdentifiedRequest, request_id_of

if TYPE_CHECKING:
    from gatewayd.daemon.http.app import GatewayHandler


class GatewayServer(web.Server):
    """`web.Server` for `create_app()`'s handler, whose connections answer errors in JSON."""

    def __init__(self, handler: GatewayHandler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.gateway = handler

    def __call__(self) -> RequestHandler:
        # as web.Server.__call__ builds aiohttp's own RequestHandler, from the same arguments
        return JsonErrorConnection(self, loop=self._loop, **self._kwargs)

    def _make_request(self, message, payload, protocol, writer, task, _cls=IdentifiedRequest) -> IdentifiedRequest:
        # web.Server's own, with requests that carry their x-request-id onto their answers
        request = IdentifiedRequest(message, payload, protocol, writer, task, self._loop)
        # `identify`, written out (every request passes here: a frame less), and here rather
        # than in an __init__ of its own: one frame less again
        sent = message.headers.get(HEADER)
        request.request_id = (sent if sent is not None and USABLE.fullmatch(sent)
                              else f"{IDS.prefix}{next(IDS.counter)}")
        return request


class JsonErrorConnection(RequestHandler):
    """One client connection; only its error answer differs from aiohttp's."""

    def __init__(self, manager: GatewayServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gateway = manager.gateway

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; raises once an answer has begun
        status, code, text = refusal(status, exc)
        request_id = request_id_of(request)
        response = web.Response(status=status, body=error_body(status, code, text, request_id=request_id),
                                content_type="application/json",
                                headers={**self._gateway.unrouted_headers(), HEADER: request_id})
        response.force_close()  # the connection's framing is lost: nothing more is read from it
        return response


def refusal(status: int, exc: BaseException | None) -> tuple[int, str, str]:
    """(status, code, message) of the answer to what aiohttp refused."""
    if isinstance(exc, LineTooLong):
        return 431, "request_header_too_large", "the request line or a header field is too long"
    if isinstance(exc, HttpProcessingError):
        return 400, "invalid_http", f"the request is not valid HTTP: {first_line(exc.message)}"
    if status == 504:
        return 504, "timeout", "the gateway did not answer in time"
    if status >= 500:
        return status, "internal_error", "the gateway failed to answer this request (its log says why)"
    return status, "invalid_http", "the request is not valid HTTP"


def first_line(text: str) -> str:
    """The gist of a parser message, without the request bytes it quotes on the lines after."""
    return text.strip().split("\n", 1)[0].rstrip(":")[:200] or "it cannot be parsed"
