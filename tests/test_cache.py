"""The response cache through the real app: hits, misses and skips, scoped to the app key,
streams kept only when they ended cleanly and replayed as streams, every client format,
bounds, expiry, reloads, and what /metrics and /admin/status show."""

from __future__ import annotations

import asyncio
import json

import anthropic
import openai
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.daemon.config.load import load
from gatewayd.daemon.state.cache import CachedAnswer, LocalResponseStore
from gatewayd.daemon.state.vectors import VectorIndex
from tests.fakes import Ok, Status, Stream, fakes, gateway_config

APP, OTHER, ADMIN = "sk-app-cache-00001", "sk-other-cache-002", "sk-admin-cache-003"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "What is a cache?"}]}


def config(ups, *, cache: dict | None = None, alias_cache: str = "exact", keys: bool = True, **extra) -> dict:
    server = {"auth": {"keys": [{"name": "app", "key": APP}, {"name": "other", "key": OTHER},
                                {"name": "ops", "key": ADMIN, "role": "admin"}]}} if keys else None
    document = json.loads(gateway_config(ups, aliases={"chat": {"targets": ["a"], "cache": alias_cache}},
                                         server=server, **extra))
    document["cache"] = {"ttl": "10m", **(cache or {})}
    return document


async def cached_gateway(gateway, document: dict):
    return await gateway(json.dumps(document))


async def echo_gateway(gateway):
    """`chat` cached, answered by the mock's echo (no upstream to fake)."""
    return await gateway(f"""
        version: 1
        cache: {{ttl: 10m}}
        server: {{auth: {{keys: [{{name: app, key: {APP}}}]}}}}
        providers: {{demo: {{type: mock}}}}
        models: {{echo: {{provider: demo, model: echo}}}}
        aliases: {{chat: {{targets: [echo], cache: exact}}}}
    """)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def post(gw, body: dict, key: str = APP, headers: dict | None = None, path: str = "/v1/chat/completions"):
    response = await gw.post(path, body, headers={**bearer(key), **(headers or {})})
    return response, await response.read()


async def scrape(gw) -> str:
    async with gw.session.get(gw.url + "/metrics", headers=bearer(ADMIN)) as response:
        return await response.text()


def sample(text: str, name: str, **labels) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else name + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


async def status(gw) -> dict:
    async with gw.session.get(gw.url + "/admin/status", headers=bearer(ADMIN)) as response:
        return await response.json()


# --- exact hits ----------------------------------------------------------------------------

async def test_the_second_identical_request_is_a_hit_served_without_the_upstream(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    first, first_body = await post(gw, CHAT)
    second, second_body = await post(gw, {**CHAT, "user": "someone", "metadata": {"x": "1"}})
    assert first.headers["x-gatewayd-cache"] == "miss" and second.headers["x-gatewayd-cache"] == "hit"
    assert second_body == first_body and second.headers["x-gatewayd-deployment"] == "a"
    assert second.headers["x-gatewayd-attempts"] == "0"
    assert ups["a"].calls == 1
    other_question, _ = await post(gw, {**CHAT, "messages": [{"role": "user", "content": "And a queue?"}]})
    assert other_question.headers["x-gatewayd-cache"] == "miss" and ups["a"].calls == 2
    text = await scrape(gw)
    assert sample(text, "gatewayd_cache_lookups_total", alias="chat", result="hit") == 1.0
    assert sample(text, "gatewayd_cache_lookups_total", alias="chat", result="miss") == 2.0
    assert sample(text, "gatewayd_cache_entries") == 2.0
    cache = (await status(gw))["cache"]
    assert cache["routes"]["chat"]["hit_rate"] == round(1 / 3, 4) and cache["entries"] == 2


async def test_key_order_does_not_matter_but_any_other_field_does(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    await post(gw, {**CHAT, "temperature": 0})
    reordered, _ = await post(gw, {"temperature": 0, "messages": CHAT["messages"], "model": "chat"})
    warmer, _ = await post(gw, {**CHAT, "temperature": 1})
    assert reordered.headers["x-gatewayd-cache"] == "hit" and warmer.headers["x-gatewayd-cache"] == "miss"


async def test_an_answer_is_served_only_to_the_key_that_stored_it(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    await post(gw, CHAT, APP)
    other, _ = await post(gw, CHAT, OTHER)
    mine, _ = await post(gw, CHAT, APP)
    assert other.headers["x-gatewayd-cache"] == "miss" and mine.headers["x-gatewayd-cache"] == "hit"
    assert ups["a"].calls == 2


async def test_a_shared_cache_serves_every_key(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups, cache={"scope": "shared"}))
    await post(gw, CHAT, APP)
    other, _ = await post(gw, CHAT, OTHER)
    assert other.headers["x-gatewayd-cache"] == "hit" and ups["a"].calls == 1


async def test_no_cache_skips_the_lookup_and_no_store_skips_storing(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    unstored, _ = await post(gw, CHAT, headers={"Cache-Control": "no-store"})
    assert unstored.headers["x-gatewayd-cache"] == "miss"
    stored, _ = await post(gw, CHAT)
    assert stored.headers["x-gatewayd-cache"] == "miss"  # the no-store answer was not kept
    skipped, _ = await post(gw, CHAT, headers={"Cache-Control": "max-age=0, No-Cache"})
    assert skipped.headers["x-gatewayd-cache"] == "skip"
    hit, _ = await post(gw, CHAT)
    assert hit.headers["x-gatewayd-cache"] == "hit"
    assert ups["a"].calls == 3


async def test_an_entry_expires_after_its_ttl(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups, cache={"ttl": "300ms"}))
    await post(gw, CHAT)
    assert (await post(gw, CHAT))[0].headers["x-gatewayd-cache"] == "hit"
    await asyncio.sleep(0.4)
    assert (await post(gw, CHAT))[0].headers["x-gatewayd-cache"] == "miss" and ups["a"].calls == 2


async def test_an_alias_without_cache_answers_without_the_header(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups, alias_cache="off"))
    answers = [await post(gw, CHAT) for _ in range(2)]
    assert all("x-gatewayd-cache" not in response.headers for response, _ in answers)
    assert ups["a"].calls == 2


async def test_an_upstream_failure_is_not_stored(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    ups["a"].queue(Status(500))
    failed, _ = await post(gw, CHAT)
    assert failed.status == 503 and failed.headers["x-gatewayd-cache"] == "miss"
    answered, _ = await post(gw, CHAT)
    assert answered.status == 200 and answered.headers["x-gatewayd-cache"] == "miss"


# --- streams -------------------------------------------------------------------------------

async def test_a_clean_stream_is_kept_and_replayed_as_the_same_stream(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    ups["a"].queue(Stream(pieces=("A cache ", "keeps ", "answers.")))
    streamed = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    first, first_bytes = await post(gw, streamed)
    second, second_bytes = await post(gw, {**CHAT, "stream": True})
    assert first.headers["x-gatewayd-cache"] == "miss" and second.headers["x-gatewayd-cache"] == "hit"
    assert second.headers["Content-Type"].startswith("text/event-stream")
    assert second_bytes == first_bytes and second_bytes.endswith(b"data: [DONE]\n\n")
    assert ups["a"].calls == 1
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=APP, max_retries=0) as client:
        stream = await client.chat.completions.create(model="chat", messages=CHAT["messages"], stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == "A cache keeps answers." and ups["a"].calls == 1


async def test_a_stream_that_failed_midway_is_never_stored(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    ups["a"].queue(Stream(pieces=("one ", "two ", "three "), cut_after=2))
    _, cut = await post(gw, {**CHAT, "stream": True})
    assert b"[DONE]" not in cut
    again, whole = await post(gw, {**CHAT, "stream": True})
    assert again.headers["x-gatewayd-cache"] == "miss" and whole.endswith(b"data: [DONE]\n\n")
    assert ups["a"].calls == 2


async def test_each_form_is_kept_as_it_was_given(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups))
    await post(gw, CHAT)  # a JSON answer kept
    as_stream, _ = await post(gw, {**CHAT, "stream": True})
    assert as_stream.headers["x-gatewayd-cache"] == "miss"  # no stream kept yet: fetched, and kept
    assert (await post(gw, {**CHAT, "stream": True}))[0].headers["x-gatewayd-cache"] == "hit"
    assert (await post(gw, CHAT))[0].headers["x-gatewayd-cache"] == "hit"
    assert ups["a"].calls == 2


async def test_a_stream_kept_without_usage_is_no_hit_for_a_client_that_asks_for_it(gateway):
    gw = await echo_gateway(gateway)
    question = {"model": "chat", "messages": [{"role": "user", "content": "count me"}], "stream": True}
    with_usage = {**question, "stream_options": {"include_usage": True}}
    plain, plain_bytes = await post(gw, question)
    asked, asked_bytes = await post(gw, with_usage)
    assert plain.headers["x-gatewayd-cache"] == "miss" and b'"usage":{' not in plain_bytes
    assert asked.headers["x-gatewayd-cache"] == "miss" and b'"usage":{' in asked_bytes  # fetched, with the usage
    again, again_bytes = await post(gw, with_usage)
    assert again.headers["x-gatewayd-cache"] == "hit" and again_bytes == asked_bytes
    assert (await post(gw, question))[0].headers["x-gatewayd-cache"] == "hit"


# --- every client format -------------------------------------------------------------------

async def test_an_anthropic_client_gets_its_hit_in_its_own_format(gateway):
    gw = await echo_gateway(gateway)
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=APP, max_retries=0) as client:
        first = await client.messages.with_raw_response.create(
            model="chat", max_tokens=20, messages=[{"role": "user", "content": "echo me"}])
        second = await client.messages.with_raw_response.create(
            model="chat", max_tokens=20, messages=[{"role": "user", "content": "echo me"}])
        async with client.messages.stream(model="chat", max_tokens=20,
                                          messages=[{"role": "user", "content": "echo me"}]) as stream:
            streamed = await stream.get_final_message()
        async with client.messages.stream(model="chat", max_tokens=20,
                                          messages=[{"role": "user", "content": "echo me"}]) as stream:
            replayed = await stream.get_final_message()
    assert first.headers["x-gatewayd-cache"] == "miss" and second.headers["x-gatewayd-cache"] == "hit"
    assert (await second.parse()).content[0].text == (await first.parse()).content[0].text == "echo me"
    assert streamed.content[0].text == replayed.content[0].text == "echo me"
    openai_client, _ = await post(gw, {"model": "chat", "messages": [{"role": "user", "content": "echo me"}],
                                       "max_tokens": 20})
    assert openai_client.headers["x-gatewayd-cache"] == "miss"  # another format: another entry


# --- what a hit books ----------------------------------------------------------------------

async def test_a_hit_books_no_tokens_and_no_cost(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    document = config(ups, models={"a": {"pricing": {"input_per_mtok": 1, "output_per_mtok": 1}}})
    document["server"]["auth"]["keys"][0]["limits"] = {"tpm": 100000}
    gw = await cached_gateway(gateway, document)
    await post(gw, CHAT)
    before = await scrape(gw)
    used = (await status(gw))["keys"]["app"]["limits"]["tpm"]["used"]
    hit, _ = await post(gw, CHAT)
    assert hit.headers["x-gatewayd-cache"] == "hit"
    after = await scrape(gw)
    assert (await status(gw))["keys"]["app"]["limits"]["tpm"]["used"] == used == 12
    assert sample(after, "gatewayd_cost_total", deployment="a") == sample(before, "gatewayd_cost_total", deployment="a")
    assert sample(after, "gatewayd_tokens_total", deployment="a", kind="prompt") == 9.0


# --- reloads -------------------------------------------------------------------------------

async def test_a_reload_keeps_entries_of_unchanged_plans_and_drops_changed_ones(gateway, fake_openai):
    ups = await fakes(fake_openai, "a", "b")
    document = config(ups)
    gw = await cached_gateway(gateway, document)
    await post(gw, CHAT)

    def install() -> None:
        gw.config_path.write_text(json.dumps(document))
        gw.runtime.install(load(str(gw.config_path), {}).graph)

    document["defaults"]["timeouts"] = {"total": "60s"}  # the plan is the same
    install()
    assert (await post(gw, CHAT))[0].headers["x-gatewayd-cache"] == "hit"
    document["aliases"]["chat"]["targets"] = ["b", "a"]  # another plan
    install()
    assert (await post(gw, CHAT))[0].headers["x-gatewayd-cache"] == "miss"
    assert ups["b"].calls == 1


# --- bounds --------------------------------------------------------------------------------

async def test_the_bounds_hold_and_evictions_are_counted(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups, cache={"max_entries": 2}))
    for question in ("one", "two", "three"):
        await post(gw, {**CHAT, "messages": [{"role": "user", "content": question}]})
    cache = (await status(gw))["cache"]
    assert cache["entries"] == 2 and cache["evictions"] == 1
    assert sample(await scrape(gw), "gatewayd_cache_evictions_total") == 1.0
    first, _ = await post(gw, {**CHAT, "messages": [{"role": "user", "content": "one"}]})
    assert first.headers["x-gatewayd-cache"] == "miss"  # the least recently used went first


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(64, 2048),
       st.lists(st.tuples(st.integers(0, 20), st.integers(0, 600), st.booleans()), max_size=60))
def test_a_store_never_holds_more_than_its_bounds(max_entries, max_bytes, writes):
    store = LocalResponseStore(max_entries, max_bytes, ttl=600)
    for key, size, streamed in writes:
        answer = CachedAnswer(None if streamed else b"x" * size, b"e" * size if streamed else None, "d")
        stored = store.put(key, answer)
        assert stored == (answer.size <= max_bytes)
        assert store.entries <= max_entries and store.bytes <= max_bytes
        if stored:
            assert store.get(key) is answer  # what was just stored is kept, whatever it evicted


async def test_an_answer_larger_than_the_cache_is_not_kept(gateway, fake_openai):
    ups = await fakes(fake_openai, "a")
    gw = await cached_gateway(gateway, config(ups, cache={"max_bytes": 64}))
    ups["a"].queue(Ok("a long answer " * 20))
    await post(gw, CHAT)
    again, _ = await post(gw, CHAT)
    assert again.headers["x-gatewayd-cache"] == "miss" and (await status(gw))["cache"]["entries"] == 0


# --- semantic ------------------------------------------------------------------------------

class WordEmbeddings:
    """An OpenAI-format embeddings upstream whose vectors count a few words, so which requests
    are similar is known: "cache" and "queue" questions are orthogonal but for a shared term."""

    WORDS = ("cache", "queue", "lock")

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.app = web.Application()
        self.app.router.add_post("/v1/embeddings", self.embeddings)

    async def embeddings(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.json()
        if self.fail:
            return web.json_response({"error": {"message": "down", "type": "server_error", "param": None,
                                                "code": None}}, status=500)
        text = body["input"].lower()
        vector = [float(text.count(word)) for word in self.WORDS] + [0.2]
        return web.json_response({"object": "list", "model": "text-embedding-3-small",
                                  "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                                  "usage": {"prompt_tokens": 5, "total_tokens": 5}})


async def semantic_gateway(gateway, fake_openai, aiohttp_server):
    ups = await fakes(fake_openai, "a")
    embedder = WordEmbeddings()
    server = await aiohttp_server(embedder.app)
    document = config(ups, cache={"semantic": {"embeddings": "embed", "threshold": 0.95}}, alias_cache="semantic",
                      providers={"words": {"type": "openai", "base_url": str(server.make_url("/v1")),
                                           "api_key": "sk-words"}},
                      models={"embed": {"provider": "words", "model": "text-embedding-3-small"}})
    return await cached_gateway(gateway, document), ups["a"], embedder


def asking(text: str, **extra) -> dict:
    return {"model": "chat", "messages": [{"role": "user", "content": text}], **extra}


async def test_a_similar_request_is_served_the_stored_answer(gateway, fake_openai, aiohttp_server):
    gw, upstream, embedder = await semantic_gateway(gateway, fake_openai, aiohttp_server)
    first, first_body = await post(gw, asking("What is a cache?"))
    similar, similar_body = await post(gw, asking("Tell me what a cache is"))
    assert first.headers["x-gatewayd-cache"] == "miss" and similar.headers["x-gatewayd-cache"] == "hit"
    assert similar_body == first_body and float(similar.headers["x-gatewayd-cache-similarity"]) >= 0.95
    assert upstream.calls == 1 and embedder.calls == 2
    other, _ = await post(gw, asking("What is a queue?"))
    assert other.headers["x-gatewayd-cache"] == "miss" and upstream.calls == 2
    counts = (await status(gw))["cache"]["routes"]["chat"]
    assert (counts["hits"], counts["misses"]) == (1, 2)


async def test_a_similar_request_of_another_key_or_form_is_a_miss(gateway, fake_openai, aiohttp_server):
    gw, upstream, _ = await semantic_gateway(gateway, fake_openai, aiohttp_server)
    await post(gw, asking("What is a cache?"), APP)
    other_key, _ = await post(gw, asking("Tell me what a cache is"), OTHER)
    as_stream, _ = await post(gw, asking("Tell me what a cache is", stream=True), APP)
    assert other_key.headers["x-gatewayd-cache"] == "miss" and as_stream.headers["x-gatewayd-cache"] == "miss"
    assert upstream.calls == 3


async def test_an_embeddings_failure_is_a_miss_not_a_failed_request(gateway, fake_openai, aiohttp_server):
    gw, upstream, embedder = await semantic_gateway(gateway, fake_openai, aiohttp_server)
    await post(gw, asking("What is a cache?"))
    embedder.fail = True
    answered, _ = await post(gw, asking("Tell me what a cache is"))
    assert answered.status == 200 and answered.headers["x-gatewayd-cache"] == "miss"
    assert upstream.calls == 2 and embedder.calls >= 2


def test_the_index_finds_the_nearest_of_the_same_group_and_stays_bounded():
    index = VectorIndex(max_entries=3)
    assert index.add("g", "cache", [1.0, 0.0, 0.1]) and index.add("g", "queue", [0.0, 1.0, 0.1])
    assert index.add("h", "other-group", [1.0, 0.0, 0.1])
    key, similarity = index.nearest("g", [2.0, 0.0, 0.2])  # the length does not matter
    assert key == "cache" and abs(similarity - 1.0) < 1e-6
    assert index.nearest("nobody", [1.0, 0.0, 0.1]) is None
    assert not index.add("g", "wrong-size", [1.0, 0.0])  # another dimension is not comparable
    assert not index.add("g", "zero", [0.0, 0.0, 0.0]) and not index.add("g", "nan", [float("nan"), 1.0, 1.0])
    index.add("g", "lock", [0.0, 0.0, 1.0])  # full: the oldest row ("cache") is reused
    assert index.size == 3 and index.nearest("g", [1.0, 0.0, 0.1])[0] != "cache"
    index.retain(lambda key: key != "queue")
    assert index.nearest("g", [0.0, 1.0, 0.1])[0] == "lock"


async def test_a_responses_client_gets_its_hit_in_its_own_format(gateway):
    gw = await echo_gateway(gateway)
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=APP, max_retries=0) as client:
        first = await client.responses.with_raw_response.create(model="chat", input="echo this")
        second = await client.responses.with_raw_response.create(model="chat", input="echo this")
        streamed = await client.responses.create(model="chat", input="echo this", stream=True)
        kinds = [event.type async for event in streamed]
        replayed = await client.responses.with_raw_response.create(model="chat", input="echo this", stream=True)
        replayed_kinds = [event.type async for event in replayed.parse()]
    assert first.headers["x-gatewayd-cache"] == "miss" and second.headers["x-gatewayd-cache"] == "hit"
    assert first.parse().output_text == second.parse().output_text == "echo this"
    assert kinds[-1] == "response.completed" and replayed_kinds == kinds
    assert replayed.headers["x-gatewayd-cache"] == "hit"
