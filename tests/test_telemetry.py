"""`telemetry:` OTLP/HTTP traces, through the real daemon, to a collector fake on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import openai
import pytest

from tests.compiling import compiled, errors, in_tmp  # noqa: F401 (in_tmp: autouse)
from tests.daemon_proc import Daemon, free_port, wait_until
from tests.fakes import Status, fakes, gateway_config
from tests.fakes_otlp import CLIENT, SERVER, STATUS_ERROR, Collector

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
async def collector(aiohttp_server):
    fake = Collector()
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")
    yield fake
    fake.release()


def telemetry_config(ups: dict, port: int, endpoint: str, **telemetry) -> str:
    document = json.loads(gateway_config(ups, aliases={"chat": {"targets": ["a", "b"]}},
                                         models={"b": {"pricing": {"input_per_mtok": 1, "output_per_mtok": 2}}}))
    document["server"] = {"listen": f"127.0.0.1:{port}", "shutdown_grace": "2s"}
    document["telemetry"] = {"otlp_endpoint": endpoint, "service_name": "gw-under-test", **telemetry}
    return json.dumps(document)


def sdk(gw: Daemon, headers: dict | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=20,
                              default_headers=headers)


async def metric(gw: Daemon, name: str) -> float:
    async with gw.session.get(gw.url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def test_a_request_exports_a_server_span_and_a_client_span_per_attempt(tmp_path, fake_openai, collector):
    ups = await fakes(fake_openai, "a", "b")
    ups["a"].queue(Status(500, "a is down"))
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(telemetry_config(ups, port, collector.url))
    async with Daemon(path, port, tmp_path) as gw:
        async with sdk(gw, {"traceparent": TRACEPARENT}) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}])
        assert raw.parse().choices[0].message.content == "from b"
        await wait_until(spans_at(collector, 3), timeout=10, what="three spans at the collector")

    (server,) = collector.of_kind(SERVER)
    failed, answered = sorted(collector.of_kind(CLIENT), key=lambda span: span.start)
    assert server.resource["service.name"] == "gw-under-test"
    # the client's trace continues through the gateway to each upstream request
    assert server.trace_id == failed.trace_id == answered.trace_id == CLIENT_TRACE
    assert server.parent_id == CLIENT_SPAN
    assert failed.parent_id == answered.parent_id == server.span_id
    sent = [request["headers"]["traceparent"] for request in ups["a"].requests + ups["b"].requests]
    assert sent == [f"00-{CLIENT_TRACE}-{failed.span_id}-01", f"00-{CLIENT_TRACE}-{answered.span_id}-01"]

    assert server.name == "chat chat"
    assert server.attributes["gen_ai.operation.name"] == "chat"
    assert server.attributes["gen_ai.request.model"] == "chat"
    assert server.attributes["gen_ai.response.model"] == "up-b"
    assert server.attributes["gen_ai.provider.name"] == "openai"
    assert server.attributes["gen_ai.usage.input_tokens"] == 9
    assert server.attributes["gen_ai.usage.output_tokens"] == 3
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["gatewayd.request_id"] == raw.headers["x-request-id"]
    assert server.attributes["gatewayd.attempts"] == 2

    assert failed.name == "chat up-a"
    assert failed.attributes["gen_ai.request.model"] == "up-a"
    assert failed.attributes["gen_ai.provider.name"] == "openai"
    assert failed.attributes["error.type"] == "server"
    assert failed.attributes["http.response.status_code"] == 500
    assert failed.status == STATUS_ERROR
    assert answered.attributes["gen_ai.request.model"] == "up-b"
    assert answered.attributes["gen_ai.response.model"] == "up-b"
    assert answered.attributes["gen_ai.usage.input_tokens"] == 9
    assert answered.attributes["gen_ai.usage.output_tokens"] == 3
    assert answered.status != STATUS_ERROR
    assert server.start <= failed.start < failed.end <= answered.start < answered.end <= server.end
    # a credential never rides along
    assert "sk-a-secret" not in repr(collector.spans) and "sk-b-secret" not in repr(collector.spans)


def spans_at(collector: Collector, count: int):
    async def probe():
        return len(collector.spans) >= count
    return probe


async def test_a_stream_and_a_request_without_traceparent_start_their_own_traces(tmp_path, fake_openai, collector):
    ups = await fakes(fake_openai, "a", "b")
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(telemetry_config(ups, port, collector.url))
    async with Daemon(path, port, tmp_path) as gw:
        async with sdk(gw) as client:
            stream = await client.chat.completions.create(model="chat", stream=True,
                                                          messages=[{"role": "user", "content": "hi"}])
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        assert text == "from a"
        await wait_until(spans_at(collector, 2), timeout=10, what="two spans at the collector")
    (server,) = collector.of_kind(SERVER)
    (attempt,) = collector.of_kind(CLIENT)
    assert server.parent_id == ""
    assert attempt.parent_id == server.span_id and attempt.trace_id == server.trace_id
    version, trace_id, parent_id, flags = ups["a"].requests[0]["headers"]["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", server.trace_id, attempt.span_id)
    assert int(flags, 16) & 1  # sampled
    assert attempt.end <= server.end


async def test_traces_begin_with_the_request_ring_off(tmp_path, fake_openai, collector):
    ups = await fakes(fake_openai, "a", "b")
    port = free_port()
    path = tmp_path / "gateway.yaml"
    document = json.loads(telemetry_config(ups, port, collector.url))
    document["server"]["recent_requests"] = 0
    path.write_text(json.dumps(document))
    async with Daemon(path, port, tmp_path) as gw:
        async with sdk(gw, {"traceparent": TRACEPARENT}) as client:
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        await wait_until(spans_at(collector, 2), timeout=10, what="two spans at the collector")
    (server,) = collector.of_kind(SERVER)
    (attempt,) = collector.of_kind(CLIENT)
    assert server.trace_id == attempt.trace_id == CLIENT_TRACE and attempt.parent_id == server.span_id


async def test_a_collector_that_is_stuck_costs_no_request_anything_and_drops_are_counted(
        tmp_path, fake_openai, collector):
    ups = await fakes(fake_openai, "a", "b")
    collector.hold()  # every export waits until the requests are done
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(telemetry_config(ups, port, collector.url, max_queue=4))
    async with Daemon(path, port, tmp_path) as gw:
        async with sdk(gw) as client:
            await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
            await wait_until(held_at(collector), timeout=10, what="an export held at the collector")
            for _ in range(12):  # all answered while the collector holds the export
                answer = await client.chat.completions.create(model="chat",
                                                              messages=[{"role": "user", "content": "hi"}])
                assert answer.choices[0].message.content == "from a"
        assert collector.held >= 1
        assert await metric(gw, "gatewayd_trace_spans_dropped_total") > 0
        collector.release()


def held_at(collector: Collector):
    async def probe():
        return collector.held > 0
    return probe


async def test_a_collector_that_is_down_costs_no_request_anything(tmp_path, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    port = free_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(telemetry_config(ups, port, f"http://127.0.0.1:{free_port()}"))
    async with Daemon(path, port, tmp_path) as gw:
        async with sdk(gw) as client:
            for _ in range(3):
                answer = await client.chat.completions.create(model="chat",
                                                              messages=[{"role": "user", "content": "hi"}])
                assert answer.choices[0].message.content == "from a"

        async def failed():
            return await metric(gw, "gatewayd_trace_spans_failed_total") > 0
        await wait_until(failed, timeout=15, what="the failed export to be counted")
        assert await metric(gw, "gatewayd_trace_spans_exported_total") == 0


PROBE = """
import asyncio, sys
import aiohttp
from gatewayd.daemon.config.load import load
from gatewayd.daemon.http.app import create_app
from gatewayd.daemon.http.connection import GatewayServer
from gatewayd.daemon.http.runtime import Runtime
from aiohttp import web

async def main():
    runtime = Runtime(load(sys.argv[1]), sys.argv[1])
    runner = web.ServerRunner(GatewayServer(create_app(runtime)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    async with aiohttp.ClientSession() as session:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response:
            assert response.status == 200, await response.text()
    await runtime.close()
    await runner.cleanup()
    print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))

asyncio.run(main())
"""


def test_without_telemetry_nothing_of_opentelemetry_is_imported(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        providers: {demo: {type: mock}}
        models: {echo: {provider: demo, model: echo}}
        """))
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


BASE = """\
version: 1
providers: {demo: {type: mock}}
models: {echo: {provider: demo, model: echo}}
"""


def test_telemetry_settings_compile_with_their_defaults():
    graph = compiled(BASE + "telemetry: {otlp_endpoint: 'http://127.0.0.1:4318/'}\n")
    assert graph.telemetry.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert (graph.telemetry.service_name, graph.telemetry.sample, graph.telemetry.max_queue) == ("gatewayd", 1.0, 2048)
    full = compiled(BASE + "telemetry: {otlp_endpoint: 'https://otel.example:4318/v1/traces', sample: 0.25}\n")
    assert full.telemetry.endpoint == "https://otel.example:4318/v1/traces"
    assert full.telemetry.sample == 0.25
    assert compiled(BASE).telemetry is None


def test_telemetry_refuses_a_credential_in_the_endpoint_and_bad_values():
    (problem,) = errors(BASE + "telemetry: {otlp_endpoint: 'http://user:pw@127.0.0.1:4318'}\n")
    assert ":4:" in problem and "user or password" in problem
    assert "pw" not in problem.split("otlp_endpoint", 1)[1]
    assert errors(BASE + "telemetry: {otlp_endpoint: 'http://127.0.0.1:4318', sample: 2}\n")
    assert errors(BASE + "telemetry: {service_name: gw}\n")
