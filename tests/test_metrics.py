"""GET /metrics: Prometheus text, parsed back with prometheus_client's parser."""

from __future__ import annotations

import os
import time

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.daemon.observe.metrics import STATES
from gatewayd.daemon.reload import Reloader
from gatewayd.daemon.sdnotify import Notifier
from tests.fakes import Ok, Status, Stream, completion

SECRET = "sk-metrics-secret-777"


@pytest.fixture
async def scraped(gateway, fake_openai):
    """Some traffic through the real app, then one scrape: (samples, raw text, gateway)."""
    bad, good = await fake_openai("bad"), await fake_openai("good")
    bad.default = Status(500, message=f"broken, key {SECRET}")
    gw = await gateway(f"""
        version: 1
        providers:
          bad: {{type: openai, base_url: "{bad.base_url}", api_key: {SECRET}}}
          good: {{type: openai, base_url: "{good.base_url}"}}
        defaults:
          retry: {{attempts: 1}}
          cooldown: {{failures: 2, initial: 60s}}
        models:
          flaky: {{provider: bad, model: flaky-upstream}}
          priced:
            provider: good
            model: priced-upstream
            pricing: {{input_per_mtok: 2.5, output_per_mtok: 10}}
        aliases:
          chat: {{targets: [flaky], fallbacks: [priced]}}
    """)
    for _ in range(3):  # flaky fails twice (then cools down), priced answers all three
        answer = await gw.chat("chat")
        assert answer.status == 200
        await answer.read()
    good.queue(Stream(pieces=("a", "b")))
    async with await gw.chat("priced", stream=True) as answer:
        assert answer.status == 200
        assert (await answer.read()).endswith(b"data: [DONE]\n\n")
    async with await gw.chat("nope") as answer:
        assert answer.status == 404
    async with gw.session.get(gw.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, text, gw


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def requests_total(samples: dict, model: str, deployment: str, status: str, format: str = "openai") -> float:
    return value(samples, "gatewayd_requests_total", model=model, deployment=deployment, status=status, format=format)


async def test_requests_attempts_and_failures(scraped):
    samples, text, _ = scraped
    assert requests_total(samples, "chat", "priced", "200") == 3
    assert requests_total(samples, "priced", "priced", "200") == 1
    assert requests_total(samples, "-", "-", "404") == 1
    assert value(samples, "gatewayd_upstream_attempts_total", model="chat") == 5  # 2 x (flaky, priced) + priced
    assert value(samples, "gatewayd_upstream_failures_total", deployment="flaky", **{"class": "server"}) == 2
    assert value(samples, "gatewayd_fallbacks_total", model="chat", deployment="flaky") == 2
    assert SECRET not in text


async def test_latency_and_time_to_first_byte_histograms(scraped):
    samples, _, _ = scraped
    for name in ("gatewayd_request_duration_seconds", "gatewayd_time_to_first_byte_seconds"):
        assert value(samples, f"{name}_count", model="chat") == 3
        assert value(samples, f"{name}_bucket", model="chat", le="+Inf") == 3
        assert 0 < value(samples, f"{name}_sum", model="chat") < 30
        assert value(samples, f"{name}_count", model="priced") == 1  # the stream


async def test_tokens_and_cost_from_pricing(scraped):
    samples, _, _ = scraped
    # the fake upstream reports 9 prompt and 3 completion tokens per non-streamed answer
    assert value(samples, "gatewayd_tokens_total", deployment="priced", kind="prompt") == 27
    assert value(samples, "gatewayd_tokens_total", deployment="priced", kind="completion") == 9
    assert value(samples, "gatewayd_cost_total", deployment="priced") == pytest.approx((27 * 2.5 + 9 * 10) / 1e6)


async def test_deployment_state_and_config_version(scraped):
    samples, _, gw = scraped
    for deployment, current in (("flaky", "cooldown"), ("priced", "ok")):
        for state in STATES:
            expected = 1.0 if state == current else 0.0
            assert value(samples, "gatewayd_deployment_state", deployment=deployment, state=state) == expected
    version = gw.runtime.holder.current.graph.version
    assert value(samples, "gatewayd_config_info", version=version) == 1
    assert value(samples, "gatewayd_inflight_requests") == 1  # the scrape itself


async def scrape(gw) -> dict:
    async with gw.session.get(gw.url + "/metrics") as response:
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_reloads_by_result_and_the_new_config_version(gateway):
    gw = await gateway("""
        version: 1
        providers:
          demo: {type: mock}
        models:
          echo: {provider: demo, model: echo}
    """)
    reloader = Reloader(gw.runtime, Notifier(None))
    gw.config_path.write_text(gw.config_path.read_text().replace("echo: {", "echo2: {"))
    await reloader.reload("api")
    gw.config_path.write_text("version: 1\nproviders: [\n")
    await reloader.reload("api")
    samples = await scrape(gw)
    assert value(samples, "gatewayd_reloads_total", result="accepted", trigger="api") == 1
    assert value(samples, "gatewayd_reloads_total", result="rejected", trigger="api") == 1
    versions = [labels for (name, labels) in samples if name == "gatewayd_config_info"]
    assert versions == [(("version", gw.runtime.holder.current.graph.version),)]
    assert value(samples, "gatewayd_deployment_state", deployment="echo2", state="ok") == 1


LE = ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "120.0",
      "300.0", "+Inf")
HISTOGRAMS = ("gatewayd_request_duration_seconds", "gatewayd_time_to_first_byte_seconds")


def buckets(samples: dict, name: str, **labels) -> list[float]:
    return [value(samples, f"{name}_bucket", le=le, **labels) for le in LE]


async def one_model(gateway, fake_openai, name: str = "up"):
    """A gateway with one model `m` on one fake upstream, one attempt per request."""
    fake = await fake_openai(name)
    gw = await gateway(f"""
        version: 1
        providers:
          {name}: {{type: openai, base_url: "{fake.base_url}"}}
        defaults:
          retry: {{attempts: 1}}
        models:
          m:
            provider: {name}
            model: m-upstream
            pricing: {{input_per_mtok: 1, output_per_mtok: 2}}
    """)
    return fake, gw


async def ask(gw, times: int, model: str = "m", status: int = 200) -> None:
    for _ in range(times):
        async with await gw.chat(model) as answer:
            assert answer.status == status
            await answer.read()


async def test_histogram_buckets_count_and_sum_follow_the_observations(gateway, fake_openai):
    delay = 0.11  # every request takes longer than the 0.1 bucket, and far less than 30 s
    fake, gw = await one_model(gateway, fake_openai)
    fake.default = Ok(delay=delay)
    await ask(gw, 3)
    samples = await scrape(gw)
    for name in HISTOGRAMS:
        counts = buckets(samples, name, model="m")
        assert counts == sorted(counts)  # cumulative
        assert counts[:LE.index("0.1") + 1] == [0] * 5  # `le` holds what is at most the bound
        assert counts[LE.index("30.0"):] == [3] * 5
        assert value(samples, f"{name}_count", model="m") == counts[-1] == 3
        assert 3 * delay <= value(samples, f"{name}_sum", model="m") < 3 * 30
    latency_sum = value(samples, "gatewayd_request_duration_seconds_sum", model="m")
    assert value(samples, "gatewayd_time_to_first_byte_seconds_sum", model="m") <= latency_sum


async def test_counters_and_histograms_add_up_across_scrapes(gateway, fake_openai):
    _, gw = await one_model(gateway, fake_openai)
    await ask(gw, 2)
    before = await scrape(gw)
    await ask(gw, 3)
    await ask(gw, 2, model="nope", status=404)
    after = await scrape(gw)
    for samples, answered, unknown in ((before, 2, None), (after, 5, 2)):
        assert requests_total(samples, "m", "m", "200") == answered
        assert value(samples, "gatewayd_upstream_attempts_total", model="m") == answered
        # the fake upstream reports 9 prompt and 3 completion tokens per answer
        assert value(samples, "gatewayd_tokens_total", deployment="m", kind="prompt") == 9 * answered
        assert value(samples, "gatewayd_tokens_total", deployment="m", kind="completion") == 3 * answered
        assert value(samples, "gatewayd_cost_total", deployment="m") == pytest.approx(answered * (9 + 3 * 2) / 1e6)
        for name in HISTOGRAMS:
            assert value(samples, f"{name}_count", model="m") == answered
            assert buckets(samples, name, model="m")[-1] == answered
        if unknown is not None:  # an unknown model is counted under "-", with no attempt and no first byte
            assert requests_total(samples, "-", "-", "404") == unknown
            assert value(samples, "gatewayd_upstream_attempts_total", model="-") == 0
            assert value(samples, "gatewayd_request_duration_seconds_count", model="-") == unknown
            assert value(samples, "gatewayd_time_to_first_byte_seconds_count", model="-") == 0
    answered_labels = {"model": "m", "deployment": "m", "status": "200", "format": "openai"}
    for name, labels in (("gatewayd_requests_created", answered_labels),
                         ("gatewayd_upstream_attempts_created", {"model": "m"}),
                         ("gatewayd_request_duration_seconds_created", {"model": "m"}),
                         ("gatewayd_tokens_created", {"deployment": "m", "kind": "prompt"})):
        created = value(after, name, **labels)
        assert created == value(before, name, **labels) <= time.time()  # the series was made once


async def test_metric_types_and_bucket_bounds(gateway, fake_openai):
    _, gw = await one_model(gateway, fake_openai)
    await ask(gw, 1)
    async with gw.session.get(gw.url + "/metrics") as response:
        text = await response.text()
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name in ("gatewayd_requests", "gatewayd_upstream_attempts", "gatewayd_tokens", "gatewayd_cost"):
        assert types[name] == "counter"
        assert f"# TYPE {name}_total counter\n" in text
    for name in HISTOGRAMS:
        assert types[name] == "histogram"
        bounds = [line.split('le="')[1].split('"')[0] for line in text.splitlines()
                  if line.startswith(f"{name}_bucket{{")]
        assert bounds == list(LE)


async def test_an_upstreams_negative_usage_is_not_counted(gateway, aiohttp_server):
    """A counter never goes down; the request is still answered."""

    async def answer(request: web.Request) -> web.Response:
        body = completion("m-upstream", "hi")
        body["usage"] = {"prompt_tokens": -5, "completion_tokens": 4, "total_tokens": -1}
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    upstream = await aiohttp_server(app)
    gw = await gateway(f"""
        version: 1
        providers:
          odd: {{type: openai, base_url: "{upstream.make_url('/v1')}"}}
        models:
          m: {{provider: odd, model: m-upstream, pricing: {{input_per_mtok: 1, output_per_mtok: 0}}}}
    """)
    await ask(gw, 2)
    samples = await scrape(gw)
    assert requests_total(samples, "m", "m", "200") == 2
    assert value(samples, "gatewayd_tokens_total", deployment="m", kind="prompt") == 0
    assert value(samples, "gatewayd_tokens_total", deployment="m", kind="completion") == 8
    assert value(samples, "gatewayd_cost_total", deployment="m") == 0


async def test_process_metrics_come_from_this_process(scraped):
    samples, _text, _gw = scraped  # the test process serves the app: the figures are its own
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") >= 3
    assert abs(value(samples, "process_start_time_seconds") - start_time_of_this_process()) < 5


def start_time_of_this_process() -> float:
    """This process's start, from /proc as the kernel keeps it (clock ticks since boot)."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rpartition(")")[2].split()[19])
    with open("/proc/stat") as proc_stat:
        boot = next(int(line.split()[1]) for line in proc_stat if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")
