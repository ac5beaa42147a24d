"""`x-request-id` through the real app: made or echoed on every answer (JSON, stream, error,
operations endpoints, the HTTP parser's refusals), in the access line and in error bodies;
a client's id that a header or a log line cannot carry as it is, is replaced."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from gatewayd.daemon.http.requestid import USABLE, identify

MOCK = """
version: 1
providers: {demo: {type: mock}}
models: {echo: {provider: demo, model: echo}}
"""
ASK = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


async def test_every_answer_carries_an_id_and_each_request_its_own(gateway):
    gw = await gateway(MOCK)
    ids = []
    for method, path, payload in (("POST", "/v1/chat/completions", ASK),
                                  ("POST", "/v1/chat/completions", {**ASK, "stream": True}),
                                  ("POST", "/v1/chat/completions", {**ASK, "model": "nope"}),
                                  ("POST", "/v1/messages", {**ASK, "max_tokens": 5}),
                                  ("POST", "/v1/responses", {"model": "echo", "input": "hi"}),
                                  ("GET", "/v1/models", None), ("GET", "/healthz", None),
                                  ("GET", "/admin/status", None), ("GET", "/no/such/path", None)):
        async with gw.session.request(method, gw.url + path, json=payload) as response:
            await response.read()
            ids.append(response.headers["x-request-id"])
    assert len(set(ids)) == len(ids) and all(USABLE.fullmatch(rid) for rid in ids)


async def test_a_clients_id_is_echoed_in_the_header_the_error_body_and_the_access_line(gateway, caplog):
    gw = await gateway(MOCK)
    with caplog.at_level(logging.INFO, logger="gatewayd.access"):
        answered = await gw.post("/v1/chat/completions", ASK, headers={"x-request-id": "trace-7f3a:span-1"})
        refused = await gw.post("/v1/chat/completions", {**ASK, "model": "nope"},
                                headers={"X-Request-Id": "trace-7f3a:span-2"})
        body = await refused.json()
        counted = await gw.post("/v1/messages/count_tokens", {"model": "echo", "messages": ASK["messages"]},
                                headers={"x-request-id": "trace-7f3a:span-3"})
        await counted.read()
        listed = await gw.session.get(gw.url + "/v1/models", headers={"x-request-id": "trace-7f3a:span-4"})
        await listed.read()
    assert answered.headers["x-request-id"] == "trace-7f3a:span-1"
    assert refused.status == 404 and refused.headers["x-request-id"] == "trace-7f3a:span-2"
    assert body["request_id"] == "trace-7f3a:span-2" and body["error"]["code"] == "model_not_found"
    lines = [record.getMessage() for record in caplog.records if record.name == "gatewayd.access"]
    assert any("request_id=trace-7f3a:span-1" in line for line in lines)
    assert any("request_id=trace-7f3a:span-2" in line for line in lines)
    assert any("request_id=trace-7f3a:span-3" in line for line in lines)  # count_tokens' own access line
    assert any(line.startswith("GET /v1/models 200") and line.endswith("request_id=trace-7f3a:span-4")
               for line in lines)


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "caf\u00e9", "tab\there", "", 'a"quote', "back\\slash"])
async def test_an_id_a_header_or_a_log_line_cannot_carry_is_replaced(gateway, sent):
    gw = await gateway(MOCK)
    response = await gw.post("/v1/chat/completions", {**ASK, "model": "nope"},
                             headers={"x-request-id": sent.encode("utf-8").decode("latin-1")})
    made = response.headers["x-request-id"]
    assert made != sent and made.startswith("req_") and (await response.json())["request_id"] == made


async def test_a_request_the_http_parser_refuses_has_an_id_too(gateway):
    gw = await gateway(MOCK)
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    made = next(line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                if line.lower().startswith(b"x-request-id:"))
    assert json.loads(payload)["request_id"] == made


def test_a_forked_process_makes_ids_of_its_own():
    parent = identify({})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its first id and leave at once
        try:
            os.write(write, identify({}).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 200).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert child and child.rsplit("_", 1)[0] != parent.rsplit("_", 1)[0]
