"""How the OpenAI adapter reads what it relays: answers (`from_upstream`) and stream events
(`check_chunk`), on literal bodies (the end-to-end paths are in test_api.py and test_streams.py);
and, against a fake upstream, that no answer, error answer or stream event is read past its bound.

Both first `glance` at the body (msgspec, building only `usage` and `error`) and read it in
full with orjson only when it is unusual. These tests pin the verdicts on the shapes that
matter and check, on generated JSON, that the glance never changes a verdict: every body gets
the same usage, or the same error, as the full reading alone (kept here as the reference).
"""

from __future__ import annotations

import gzip
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.adapters.base import MAX_ERROR_BODY
from gatewayd.adapters.openai import OpenAIAdapter, check_chunk, from_upstream, glance, usage_from_openai
from gatewayd.daemon.core.exchange import Operation, Request, WireFormat
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.graph import (
    Backoff,
    CooldownPolicy,
    Deployment,
    Policy,
    Provider,
    RetryPolicy,
    Timeouts,
)
from gatewayd.daemon.core.replies import Usage
from tests.fakes import Large, Raw, eventually
from tests.wire import chat_request, error_json, stream_request

ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini",'
          b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello!","refusal":null,'
          b'"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":8,'
          b'"completion_tokens":15,"total_tokens":23,"prompt_tokens_details":{"cached_tokens":0}},'
          b'"system_fingerprint":"fp_1"}')
CHUNK = (b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini",'
         b'"choices":[{"index":0,"delta":{"content":" How"},"logprobs":null,"finish_reason":null}]}')


# --- the reference: the full reading the glance stands in front of ---------------------------

def reference_answer(raw: bytes) -> Usage | None:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not JSON") from None
    if not isinstance(payload, dict):
        raise UpstreamError(FailureClass.PROTOCOL, "upstream answer is not a JSON object")
    if "error" in payload and isinstance(payload["error"], dict):
        raise UpstreamError(FailureClass.PROTOCOL, str(payload["error"].get("message", "in-band error")))
    return usage_from_openai(payload)


def reference_chunk(data: bytes) -> Usage | None:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError(FailureClass.PROTOCOL, "malformed stream event from upstream") from None
    if not isinstance(payload, dict):
        raise UpstreamError(FailureClass.PROTOCOL, "malformed stream event from upstream")
    error = payload.get("error")
    if error:
        message = error.get("message", "in-band error") if isinstance(error, dict) else error
        raise UpstreamError(FailureClass.PROTOCOL, str(message))
    return usage_from_openai(payload)


def verdict(read, data: bytes):
    """What `read` makes of `data`: the usage, or the failure and its message."""
    try:
        return ("usage", read(data))
    except UpstreamError as error:
        return ("error", error.failure, error.message)
    except (ValueError, TypeError, OverflowError) as error:  # an adapter bug the router turns into `protocol`
        return ("bug", type(error))


def answer_usage(raw: bytes) -> Usage | None:
    return from_upstream(raw).usage


def chunk_usage(data: bytes) -> Usage | None:
    event, usage = check_chunk(data)
    assert event == b"data: " + data + b"\n\n"  # relayed as it came
    return usage


# --- the usual shapes: the glance answers, the bytes go on untouched -------------------------

def test_an_answer_is_relayed_as_it_came_with_its_usage():
    reply = from_upstream(ANSWER)
    assert reply.body is ANSWER
    assert reply.usage == Usage(8, 15)
    assert glance(ANSWER) == Usage(8, 15)


def test_a_stream_event_is_relayed_as_it_came():
    assert check_chunk(CHUNK) == (b"data: " + CHUNK + b"\n\n", None)
    assert glance(CHUNK) is None  # no usage: the glance answered, no full reading needed
    assert check_chunk(b"[DONE]") == (None, None)


def test_the_last_stream_event_carries_the_usage():
    final = (b'{"id":"c","object":"chat.completion.chunk","choices":[],'
             b'"usage":{"prompt_tokens":3,"completion_tokens":4}}')
    assert check_chunk(final)[1] == Usage(3, 4)


@pytest.mark.parametrize("body, usage", [
    (b'{"usage": null}', None),
    (b'{"usage": {}}', Usage(0, 0)),
    (b'{"usage": {"prompt_tokens": null, "completion_tokens": 2}}', Usage(0, 2)),
    (b'{"usage": {"prompt_tokens": 8.0, "completion_tokens": 2}}', Usage(8, 2)),  # a float: the full reading
    (b'{"usage": {"prompt_tokens": true}}', Usage(1, 0)),  # as int(True) always did
    (b'{"usage": "none"}', None),
    (b'{"error": null, "usage": {"prompt_tokens": 1}}', Usage(1, 0)),
    (b'{"error": "a bare string is not an error object"}', None),
    (b'{"content": "caf\xc3\xa9"}', None),  # UTF-8 outside ASCII
])
def test_usage_of_unusual_answers(body, usage):
    assert from_upstream(body).usage == usage


@pytest.mark.parametrize("body, message", [
    (b"<html>bad gateway</html>", "upstream answer is not JSON"),
    (b'{"id": "x", "choices": [', "upstream answer is not JSON"),  # truncated
    (b'{"a": "\xff"}', "upstream answer is not JSON"),  # not UTF-8 inside a string the glance skips
    (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "upstream answer is not JSON"),  # nested too deep
    (b'[{"usage": {"prompt_tokens": 1}}]', "upstream answer is not a JSON object"),
    (b'{"error": {"message": "model overloaded", "type": "server_error"}}', "model overloaded"),
    (b'{"error": {}}', "in-band error"),
])
def test_answers_that_fail(body, message):
    with pytest.raises(UpstreamError) as caught:
        from_upstream(body)
    assert caught.value.failure is FailureClass.PROTOCOL
    assert caught.value.message == message


@pytest.mark.parametrize("data, message", [
    (b"{not json", "malformed stream event from upstream"),
    (b'"text"', "malformed stream event from upstream"),
    (b'{"error": {"message": "overloaded"}}', "overloaded"),
    (b'{"error": "rate limited"}', "rate limited"),  # some compatible servers send a bare string
])
def test_stream_events_that_fail(data, message):
    with pytest.raises(UpstreamError) as caught:
        check_chunk(data)
    assert caught.value.message == message


# --- the glance never changes a verdict ------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=8)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
usages = st.none() | values | st.fixed_dictionaries({}, optional={
    "prompt_tokens": st.none() | st.integers(-5, 10**12) | st.floats(0, 1e6) | st.booleans() | st.text(max_size=3),
    "completion_tokens": st.none() | st.integers(-5, 10**12) | st.floats(0, 1e6),
    "total_tokens": st.integers(0, 100),
})
errors = values | st.fixed_dictionaries({"message": st.text(max_size=10)}) | st.just({})
bodies = st.one_of(
    values,
    st.fixed_dictionaries({}, optional={"id": st.text(max_size=5), "choices": values, "usage": usages,
                                        "error": errors}),
)


def encoded(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()  # integers past 64 bits too


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_an_answer_gets_the_verdict_of_the_full_reading(body):
    raw = encoded(body)
    assert verdict(answer_usage, raw) == verdict(reference_answer, raw)


@settings(max_examples=400, deadline=None)
@given(bodies)
def test_a_stream_event_gets_the_verdict_of_the_full_reading(body):
    data = encoded(body)
    assert verdict(chunk_usage, data) == verdict(reference_chunk, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | bodies.map(encoded).flatmap(
    lambda raw: st.integers(0, len(raw)).map(lambda cut: raw[:cut])))
def test_broken_bytes_get_the_verdict_of_the_full_reading(raw):
    assert verdict(answer_usage, raw) == verdict(reference_answer, raw)
    if raw != b"[DONE]":
        assert verdict(chunk_usage, raw) == verdict(reference_chunk, raw)


# --- nothing is read past its bound (server.max_upstream_body, MAX_ERROR_BODY) -----------------

LIMIT = 1024 * 1024
HUGE = 50 * 1024 * 1024  # what a runaway upstream sends: far more than the socket buffers between us hold
CHAT = chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
STREAM = stream_request({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
async def upstream(fake_openai):
    """`adapter, deployment, fake = await upstream()`: an OpenAI adapter reading at most LIMIT
    bytes of an answer from a fake upstream; its pool is closed at the end."""
    adapters = []

    async def start(limit: int = LIMIT):
        fake = await fake_openai("up")
        provider = Provider(name="up", type="openai", base_url=fake.base_url, api_key=None, headers=(),
                            max_connections=10, options={}, max_upstream_body=limit)
        policy = Policy(Timeouts(5, 5, 5, 30), RetryPolicy(1, Backoff(0.01, 0.1, 2, "full"), frozenset(),
                                                           False, False, 30), CooldownPolicy(3, 30, 2, 600))
        adapter = OpenAIAdapter(provider)
        adapters.append(adapter)
        return adapter, Deployment(name="m", provider=provider, model="up-m", policy=policy), fake

    yield start
    for adapter in adapters:
        await adapter.close()


async def failure_of(awaitable) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await awaitable
    return caught.value


async def stopped_early(fake, size: int) -> bool:
    """The fake could not write its whole answer: the adapter closed the connection."""
    assert await eventually(lambda: fake.written, 10)
    return fake.written[0] < size // 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_past_max_upstream_body_is_a_protocol_failure_not_read_further(upstream, chunked):
    adapter, deployment, fake = await upstream()
    fake.queue(Large(HUGE, chunked=chunked))
    error = await failure_of(adapter.chat(deployment, CHAT))
    assert error.failure is FailureClass.PROTOCOL
    assert "max_upstream_body" in error.message
    assert await stopped_early(fake, HUGE)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_of_exactly_max_upstream_body_is_read_and_one_byte_more_is_not(upstream, chunked):
    adapter, deployment, fake = await upstream()
    fake.queue(Large(LIMIT, chunked=chunked), Large(LIMIT + 1, chunked=chunked))
    reply = await adapter.chat(deployment, CHAT)
    assert len(reply.body) == LIMIT and orjson.loads(reply.body)["pad"].startswith("xxx")
    assert (await failure_of(adapter.chat(deployment, CHAT))).failure is FailureClass.PROTOCOL


async def test_a_compressed_answer_is_bounded_as_it_is_decompressed(upstream):
    adapter, deployment, fake = await upstream()
    bomb = gzip.compress(b'{"pad": "' + b"x" * HUGE + b'"}')  # its Content-Length is far below the bound
    assert len(bomb) < LIMIT
    fake.queue(Raw(gzip.compress(ANSWER), headers={"Content-Encoding": "gzip"}),
               Raw(bomb, headers={"Content-Encoding": "gzip"}))
    assert (await adapter.chat(deployment, CHAT)).body == ANSWER
    assert (await failure_of(adapter.chat(deployment, CHAT))).failure is FailureClass.PROTOCOL


@pytest.mark.parametrize(("status", "failure"), [(500, FailureClass.SERVER), (400, FailureClass.CLIENT)])
async def test_an_error_answer_is_read_up_to_its_own_small_bound(upstream, status, failure):
    adapter, deployment, fake = await upstream()
    fake.queue(Large(HUGE, status=status))
    error = await failure_of(adapter.chat(deployment, CHAT))
    assert (error.failure, error.status) == (failure, status)
    assert error_json(error)["error"]["message"]  # an OpenAI-shaped body of its own, not the flood
    assert await stopped_early(fake, HUGE)
    fake.queue(Large(MAX_ERROR_BODY, status=status))  # an error answer within the bound is read whole
    assert (await failure_of(adapter.chat(deployment, CHAT))).status == status
    assert fake.written[1] == MAX_ERROR_BODY


async def first_event_failure(adapter, deployment) -> UpstreamError:
    """The failure reading a new stream's first event raises (the stream closed after)."""
    stream = await adapter.stream(deployment, STREAM)
    try:
        return await failure_of(anext(aiter(stream)))
    finally:
        await stream.aclose()


async def test_a_stream_line_past_max_upstream_body_is_a_protocol_failure(upstream):
    adapter, deployment, fake = await upstream()
    fake.queue(Large(10 * 1024 * 1024, event_stream=True))
    error = await first_event_failure(adapter, deployment)
    assert error.failure is FailureClass.PROTOCOL
    assert "max_upstream_body" in error.message


async def test_a_stream_event_of_many_lines_is_bounded_as_a_whole(upstream):
    adapter, deployment, fake = await upstream()
    half = b"x" * (LIMIT // 2)
    within = b'data: {"a":\ndata: "' + half + b'"}\n\n'
    past = b'data: {"a": "' + half + b'",\ndata: "b": "' + half + b'"}\n\n'  # each line within, the event not
    fake.queue(Raw(within, content_type="text/event-stream"), Raw(past, content_type="text/event-stream"))
    stream = await adapter.stream(deployment, STREAM)
    try:
        assert await anext(aiter(stream)) == b'data: {"a":\n"' + half + b'"}\n\n'
    finally:
        await stream.aclose()
    error = await first_event_failure(adapter, deployment)
    assert error.failure is FailureClass.PROTOCOL


# --- an OpenAI client's request to an OpenAI upstream: a passthrough --------------------------

def never_decoded(body: dict):
    raise AssertionError("a passthrough must not decode the client's body")


async def test_an_openai_clients_request_goes_on_as_its_bytes_never_decoded(upstream):
    adapter, deployment, fake = await upstream()
    body = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 2},
            "some_future_field": {"kept": True}}
    request = Request(Operation.CHAT, WireFormat.OPENAI, body, decode=never_decoded)
    reply = await adapter.chat(deployment, request)
    assert reply.format is WireFormat.OPENAI and reply.answer is None
    assert orjson.loads(reply.body)["choices"][0]["message"]["role"] == "assistant"
    stream = await adapter.stream(deployment, Request(Operation.CHAT, WireFormat.OPENAI, body, stream=True,
                                                      decode=never_decoded))
    try:
        events = [event async for event in stream]
    finally:
        await stream.aclose()
    # an item is every whole event one read brought (sse.read_event_batches): the bytes end with [DONE]
    assert stream.format is WireFormat.OPENAI and b"".join(events).endswith(b"data: [DONE]\n\n")
    assert all(isinstance(event, bytes) for event in events)

