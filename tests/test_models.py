"""`GET /v1/models` and `GET /v1/models/{id}`: what a key may use and can be served,
through the official openai SDK where it fits, on the real app on 127.0.0.1."""

from __future__ import annotations

import logging

import openai
import pytest

from tests.fakes_native import BoundedGateways

BOUND = 10.0  # seconds: the longest any single wait in these tests may take
FULL_KEY = "app-key-full-0001"
LIMITED_KEY = "app-key-limited-0001"

# `gone` has an empty key: disabled, so `dead` (only gone's model) can only answer 503, while
# `spare` still reaches `echo` through its fallback. The model id holds `/` and `:`.
CATALOG = """
    version: 1
    server:
      auth:
        keys:
          - {name: full, key: app-key-full-0001}
          - {name: limited, key: app-key-limited-0001, allow: [chat, dead, "meta/llama-3:free", nope]}
    providers:
      demo: {type: mock}
      gone: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: ""}
    models:
      echo: {provider: demo, model: echo}
      "meta/llama-3:free": {provider: demo, model: echo}
      cold: {provider: gone, model: x}
    aliases:
      chat: {targets: [echo]}
      dead: {targets: [cold]}
      spare: {targets: [cold], fallbacks: [echo]}
"""


@pytest.fixture
async def gateway(gateway):
    bounded = BoundedGateways(gateway, BOUND)
    yield bounded
    await bounded.close()


def sdk(gw, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=BOUND)


async def test_the_list_leaves_out_what_can_only_fail_and_what_the_key_may_not_use(gateway):
    gw = await gateway(CATALOG)
    async with sdk(gw, FULL_KEY) as client:
        assert sorted([m.id async for m in client.models.list()]) == ["chat", "echo", "meta/llama-3:free", "spare"]
    async with sdk(gw, LIMITED_KEY) as client:  # `dead` is allowed but cannot serve; `nope` does not exist
        assert sorted([m.id async for m in client.models.list()]) == ["chat", "meta/llama-3:free"]


async def test_retrieve_answers_the_same_entry_the_list_shows(gateway):
    gw = await gateway(CATALOG)
    async with sdk(gw, FULL_KEY) as client:
        listed = {m.id: m async for m in client.models.list()}
        for name in listed:
            model = await client.models.retrieve(name)  # the SDK sends `/` as %2F
            assert model == listed[name]
            assert (model.id, model.object, model.owned_by) == (name, "model", "gatewayd")


async def test_an_id_with_slashes_sent_unencoded_is_found_too(gateway):
    gw = await gateway(CATALOG)
    async with gw.session.get(gw.url + "/v1/models/meta/llama-3:free", headers={"x-api-key": FULL_KEY}) as response:
        assert response.status == 200
        assert (await response.json())["id"] == "meta/llama-3:free"


@pytest.mark.parametrize(("key", "name"), [
    (FULL_KEY, "nope"),  # no such name
    (FULL_KEY, "dead"),  # every deployment disabled
    (FULL_KEY, "cold"),  # a model of a disabled provider
    (LIMITED_KEY, "echo"),  # exists, but not for this key: the same 404, so names cannot be probed
    (LIMITED_KEY, "dead"),  # allowed, but cannot serve
    (FULL_KEY, "chat/extra"),  # a listed name with more path after it is another name
])
async def test_retrieve_of_a_name_the_list_does_not_show_is_404_model_not_found(gateway, key, name):
    gw = await gateway(CATALOG)
    async with sdk(gw, key) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve(name)
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"


async def test_an_empty_id_is_404_model_not_found(gateway):
    gw = await gateway(CATALOG)
    async with gw.session.get(gw.url + "/v1/models/", headers={"x-api-key": FULL_KEY}) as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "model_not_found"


async def test_retrieve_needs_a_valid_key_like_the_list(gateway):
    gw = await gateway(CATALOG)
    async with gw.session.get(gw.url + "/v1/models/chat") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "missing_api_key"
    async with sdk(gw, "wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.retrieve("chat")


async def test_retrieve_answers_head_and_refuses_other_methods(gateway):
    gw = await gateway(CATALOG)
    auth = {"x-api-key": FULL_KEY}
    async with gw.session.head(gw.url + "/v1/models/chat", headers=auth) as response:
        assert response.status == 200
        assert response.headers["x-gatewayd-config"] == gw.runtime.holder.current.graph.version
    async with gw.session.post(gw.url + "/v1/models/chat", headers=auth) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET, HEAD"
        assert (await response.json())["error"]["code"] == "method_not_allowed"


async def test_a_name_cooling_down_is_still_listed(gateway):
    gw = await gateway("""
        version: 1
        defaults: {retry: {attempts: 1}, cooldown: {failures: 1, initial: 60s}}
        providers:
          flaky: {type: mock, fail_rate: 1}
        models:
          broken: {provider: flaky, model: echo}
        aliases:
          chat: {targets: [broken]}
    """)
    async with await gw.chat("chat") as response:
        assert response.status >= 500
    assert (await gw.status())["deployments"]["broken"]["state"] == "cooldown"
    async with sdk(gw, "unused") as client:  # usable later: listed and found
        assert sorted([m.id async for m in client.models.list()]) == ["broken", "chat"]
        assert (await client.models.retrieve("chat")).id == "chat"


async def test_the_access_line_names_the_id_as_model_under_the_route_path(gateway, caplog):
    caplog.set_level(logging.INFO, logger="gatewayd.access")
    gw = await gateway(CATALOG)
    forged = "x\nGET /v1/models 200"
    async with sdk(gw, FULL_KEY) as client:
        await client.models.retrieve("meta/llama-3:free")
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve(forged)
    found, missing = [r.getMessage() for r in caplog.records if r.name == "gatewayd.access"]
    assert found.startswith("GET /v1/models/{id} 200 model=meta/llama-3:free ")
    assert " key=full " in found
    assert missing.startswith('GET /v1/models/{id} 404 model="x\\nGET /v1/models 200" ')
    assert "\n" not in missing
