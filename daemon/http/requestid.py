"""`x-request-id`: the client's own when it sent a usable one, else one the gateway makes, on
every answer (set as the answer is prepared, so streams, errors and /admin/* carry it too), in
the access line and in error bodies.

A client's id is kept when it is 1 to 128 printable ASCII characters without spaces (what
a log line and a header can carry as they are); anything else is replaced, never echoed. A
made id is `req_`, 12 random hex digits drawn once per process, `_` and a counter
(`req_3f9a61c2d84e_1041`): unique across the processes of a host, and cheap to make (no
random bytes per request).
"""

from __future__ import annotations

import itertools
import os
import re

from aiohttp import web
from multidict import istr

HEADER = istr("x-request-id")  # an istr: the answer's header map takes it without folding its case
USABLE = re.compile(r"[!-~]{1,128}")


class RequestIds:
    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = f"req_{os.urandom(6).hex()}_"
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter)}"  # the counter in decimal: a third of hex's cost


IDS = RequestIds()
os.register_at_fork(after_in_child=IDS.reseed)  # a forked process makes ids of its own, not its parent's


class IdentifiedRequest(web.BaseRequest):
    """aiohttp's request, with the request's id and the hook that puts it on its answer."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(["_request_id"])
    __slots__ = ("_request_id",)  # None until first used: set by whoever makes the request (connection.py)

    @property
    def request_id(self) -> str:
        request_id = self._request_id
        if request_id is None:
            sent = self.headers.get(HEADER)
            request_id = self._request_id = sent if sent is not None and USABLE.fullmatch(sent) else IDS.new()
        return request_id

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers[HEADER] = self.request_id


def request_id_of(request: web.BaseRequest) -> str:
    """The request's id (a request built elsewhere, as by a test's mock, gets a new one)."""
    return request.request_id if isinstance(request, IdentifiedRequest) else IDS.new()
