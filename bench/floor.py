"""The aiohttp floor: the least a Python proxy does to relay an OpenAI chat request, streamed or not.

    python bench/floor.py PORT UPSTREAM_PORT

Reads the body, swaps the model, posts it to 127.0.0.1:UPSTREAM_PORT and relays the answer (a
stream one upstream read at a time), with uvloop, as gatewayd runs; `GET /healthz` says it is
up. The peer harness's bench/streams/floor.py is the same. bench/chunk_cost.py and
bench/ttfb_paired.py measure gatewayd against it.
"""

from __future__ import annotations

import json
import sys

import uvloop
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


async def on_startup(app: web.Application) -> None:
    app["session"] = ClientSession(connector=TCPConnector(limit=0, keepalive_timeout=60),
                                   timeout=ClientTimeout(total=None))


async def chat(request: web.Request) -> web.StreamResponse:
    body = json.loads(await request.read())
    body["model"] = "gpt-4o-mini"
    async with request.app["session"].post(request.app["upstream"], data=json.dumps(body).encode(),
                                           headers={"Authorization": "Bearer x",
                                                    "Content-Type": "application/json"}) as upstream:
        if body.get("stream"):
            response = web.StreamResponse(status=upstream.status, headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
        return web.Response(body=await upstream.read(), status=upstream.status, content_type="application/json")


def main() -> None:
    app = web.Application()
    app["upstream"] = f"http://127.0.0.1:{sys.argv[2]}/v1/chat/completions"
    app.on_startup.append(on_startup)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/healthz", lambda request: web.Response(text="ok"))
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
