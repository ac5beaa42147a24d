"""`x-request-id`: the client's own when it sent a usable one, else one the gateway makes, on
every answer (set as the answer is prepared, so streams, errors and /admin/* carry it too), in
the access line and in error bodies.

A client's id is kept when it is 1 to 128 printable ASCII characters without spaces, quotes
or backslashes (what a log line and a header can carry as they are, unescaped); anything else
is replaced, never echoed. A made id is `req_`, 12 random hex digits drawn once per process,
`_` and a counter (`req_3f9a61c2d84e_1041`): unique across the processes of a host, and
cheap to make (no random bytes per request).
"""

from __future__ import annotations

import itertools
import os
import re

from aiohttp import web
from multidict import istr

HEADER = istr("x-request-id")  # an istr: the answer's header map takes it without folding its case
USABLE = re.compile(r'[!#-\[\]-~]{1,128}')  # printable ASCII but space, " and \


class RequestIds:
    """This process's prefix and counter, which `identify` and the server's request factory
    (connection.py) read as they make an id: no method here, a call less per request."""

    __slots__ = ("prefix", "counter")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = f"req_{os.urandom(6).hex()}_"
        self.counter = itertools.count(1)


IDS = RequestIds()
os.register_at_fork(after_in_child=IDS.reseed)  # a forked process makes ids of its own, not its parent's


class IdentifiedRequest(web.BaseRequest):
    """aiohttp's request, with the request's id and the hook that puts it on its answer."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(["request_id"])
    __slots__ = ("request_id",)  # set as the request is made (connection.py)

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response._headers[HEADER] = self.request_id  # the map `headers` returns, without the property's call


def identify(headers) -> str:
    """The id of a request with these headers: the client's when usable, else a new one."""
    sent = headers.get(HEADER)
    if sent is not None and USABLE.fullmatch(sent):
        return sent
    return f"{IDS.prefix}{next(IDS.counter)}"  # the counter in decimal: a third of hex's cost


def request_id_of(request: web.BaseRequest) -> str:
    """The request's id, for answers off the API's path (errors, refusals). A request aiohttp
    made itself, for one it could not parse, has none yet: it gets one from its headers."""
    return request.request_id if type(request) is IdentifiedRequest else identify(request.headers)
