"""The OpenAI codec's upstream readers (formats/openai.py, "an OpenAI upstream's answers, read"):
`decode_answer` and `StreamDecoder`, on answers and streams recorded from the OpenAI API
(tests/fixtures/openai/, checked against the openai SDK's own types), on the shapes other
OpenAI-compatible servers send (written here, each after its documentation), and on generated
neutral values written by this codec's own writers (`encode_answer`, `StreamEncoder`) and read back.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gatewayd.daemon.core.conversation import ToolCall
from gatewayd.daemon.core.failures import FailureClass, UpstreamError
from gatewayd.daemon.core.replies import (
    CONTENT_FILTER,
    LENGTH,
    STOP,
    TOOL_CALLS,
    Answer,
    Delta,
    Finish,
    Start,
    ToolCallDelta,
    Usage,
)
from gatewayd.daemon.formats.openai import StreamDecoder, StreamEncoder, decode_answer, encode_answer

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
STREAMS = sorted(path.name for path in FIXTURES.glob("*.sse"))
ANSWERS = sorted(path.name for path in FIXTURES.glob("*.json"))
MODEL = "gpt-4o-2024-08-06"


def sse_data(raw: bytes) -> list[bytes]:
    """The data of each event of an SSE body (one `data:` line an event, as OpenAI writes them)."""
    return [event.removeprefix(b"data: ") for event in raw.split(b"\n\n") if event.startswith(b"data: ")]


def recorded(name: str) -> list[bytes]:
    return sse_data((FIXTURES / name).read_bytes())


def answer(name: str) -> dict:
    return orjson.loads((FIXTURES / name).read_bytes())


def chunk(delta: dict | None = None, finish: str | None = None, **fields) -> bytes:
    """A chunk as OpenAI writes it, for the shapes no recording covers."""
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1727346168, "model": MODEL,
            "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish}]}
    return orjson.dumps({**body, **fields})


def feed_all(data: list[bytes], decoder: StreamDecoder | None = None) -> tuple[list, StreamDecoder]:
    decoder = decoder or StreamDecoder(created=0)
    events = []
    for piece in data:
        events += decoder.feed(b"", piece)
    return events, decoder


def joined(events) -> str:
    return "".join(event.text for event in events if isinstance(event, Delta))


# --- the fixtures are what OpenAI sends -------------------------------------------------------

@pytest.mark.parametrize("name", STREAMS)
def test_recorded_chunks_are_openai_chunks(name):
    data = recorded(name)
    assert data[-1] == b"[DONE]"
    for piece in data[:-1]:
        ChatCompletionChunk.model_validate(orjson.loads(piece))


@pytest.mark.parametrize("name", ANSWERS)
def test_recorded_answers_are_openai_answers(name):
    ChatCompletion.model_validate(answer(name))


# --- streams, recorded --------------------------------------------------------------------------

def test_text_stream():
    events, decoder = feed_all(recorded("stream_text.sse"))
    pieces = ["I'm", " unable", " to", " provide", " real", "-time", " weather", " updates", ".", " To", " get",
              " the", " current", " weather", " in", " San", " Francisco", ",", " I", " recommend", " checking",
              " a", " reliable", " weather", " website", " or", " a", " weather", " app", "."]
    assert events == [
        Start("", id="chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL", model=MODEL, created=1727346168),
        *[Delta(piece) for piece in pieces],
        Finish(STOP),
    ]
    assert decoder.usage == Usage(14, 30, 0)
    assert decoder.done and decoder.finished
    assert decoder.feed(b"", b"[DONE]") == []  # nothing after the end


def test_tool_call_started_in_the_first_chunk():
    events, decoder = feed_all(recorded("stream_tool_call.sse"))
    pieces = ['{"', "city", '":"', "San", " Francisco", '","', "state", '":"', "CA", '"}']
    assert events == [
        Start("", tool_calls=(ToolCallDelta(0, "", "call_CTf1nWJLqSeRgDqaCG27xZ74", "get_weather"),),
              id="chatcmpl-ABfwCgi41eStOcARjZq97ohCEGBPO", model=MODEL, created=1727346180),
        *[Delta(tool_calls=(ToolCallDelta(0, piece),)) for piece in pieces],
        Finish(TOOL_CALLS),
    ]
    assert decoder.usage == Usage(48, 19, 0)
    assert decoder.done


def test_parallel_tool_calls():
    events, decoder = feed_all(recorded("stream_parallel_tool_calls.sse"))
    first = ['{"ci', 'ty": ', '"Edinb', "urgh", '", "c', "ountry", '": "', 'GB", ', '"units', '": "', 'c"}']
    second = ['{"ti', 'cker"', ': "AAP', 'L", ', '"exch', 'ange":', ' "NA', 'SDAQ"', "}"]
    assert events == [
        Start("", id="chatcmpl-ABfwAwrNePHUgBBezonVC6MX3zd63", model=MODEL, created=1727346178),
        Delta(tool_calls=(ToolCallDelta(0, "", "call_JMW1whyEaYG438VE1OIflxA2", "GetWeatherArgs"),)),
        *[Delta(tool_calls=(ToolCallDelta(0, piece),)) for piece in first],
        Delta(tool_calls=(ToolCallDelta(1, "", "call_DNYTawLBoN8fj3KN6qU9N1Ou", "get_stock_price"),)),
        *[Delta(tool_calls=(ToolCallDelta(1, piece),)) for piece in second],
        Finish(TOOL_CALLS),
    ]
    assert decoder.usage == Usage(149, 60, 0)


def test_refusal_is_text_that_ends_as_content_filter():
    events, decoder = feed_all(recorded("stream_refusal.sse"))
    pieces = ["I'm", " sorry", ",", " I", " can't", " assist", " with", " that", " request", "."]
    assert events == [
        Start("", id="chatcmpl-ABfw4IfQfCCrcuybFm41wJyxjbkz7", model=MODEL, created=1727346172),
        *[Delta(piece) for piece in pieces],
        Finish(CONTENT_FILTER),
    ]
    assert decoder.usage == Usage(79, 11, 0)


def test_length_stream():
    events, _ = feed_all(recorded("stream_length.sse"))
    assert events == [Start("", id="chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh", model=MODEL, created=1727346171),
                      Delta('{"'), Finish(LENGTH)]


def test_several_choices_only_the_first_is_read():
    events, decoder = feed_all(recorded("stream_three_choices.sse"))
    assert sum(isinstance(event, Start) for event in events) == 1
    assert events[0] == Start("", id="chatcmpl-ABfw2KKFuVXmEJgVwYfBvejMAdWtq", model=MODEL, created=1727346170)
    assert events[-1] == Finish(STOP) and sum(isinstance(event, Finish) for event in events) == 1
    assert joined(events) == '{"city":"San Francisco","temperature":65,"units":"f"}'  # choice 1 said 61, 2 said 59
    assert decoder.usage == Usage(79, 42, 0)
    assert decoder.done


def test_a_stream_cut_before_done_is_not_complete():
    data = recorded("stream_text.sse")
    assert data[-2].startswith(b'{"id"') and b'"usage"' in data[-2]
    _, decoder = feed_all(data[:-1])  # finish_reason and usage came; [DONE] did not
    assert decoder.finished and not decoder.done
    assert decoder.usage == Usage(14, 30, 0)
    _, decoder = feed_all(data[:10])
    assert not decoder.finished and not decoder.done


# --- answers, recorded ------------------------------------------------------------------------

def test_text_answer():
    assert decode_answer(answer("answer_text.json")) == Answer(
        "chatcmpl-ABfvaueLEMLNYbT8YzpJxsmiQ6HSY", MODEL, 1727346142,
        "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, I "
        "recommend checking a reliable weather website or app like the Weather Channel or a local news station.",
        STOP, Usage(14, 37, 0))


def test_refusal_answer():
    assert decode_answer(answer("answer_refusal.json")) == Answer(
        "chatcmpl-ABfvwoKVWPQj2UPlAcAKM7s40GsRx", MODEL, 1727346164,
        "I'm very sorry, but I can't assist with that.", CONTENT_FILTER, Usage(79, 12, 0))


def test_parallel_tool_calls_answer():
    assert decode_answer(answer("answer_parallel_tool_calls.json")) == Answer(
        "chatcmpl-ABfvyvfNWKcl7Ohqos4UFrmMs1v4C", MODEL, 1727346166, None, TOOL_CALLS, Usage(149, 60, 0), (
            ToolCall("call_fdNz3vOBKYgOIpMdWotB9MjY", "GetWeatherArgs",
                     '{"city": "Edinburgh", "country": "GB", "units": "c"}'),
            ToolCall("call_h1DWI1POMJLb0KwIyQHWXD4p", "get_stock_price",
                     '{"ticker": "AAPL", "exchange": "NASDAQ"}'),
        ))


def test_several_choices_answer_is_the_first():
    decoded = decode_answer(answer("answer_three_choices.json"))
    assert decoded.text == '{"city":"San Francisco","temperature":64,"units":"f"}'
    assert decoded.usage == Usage(79, 44, 0)


# --- other OpenAI-compatible servers' shapes --------------------------------------------------

# usage with cached tokens, as xAI's and OpenAI's docs show it (docs.x.ai, "Prompt caching: usage")
CACHED_USAGE = {"prompt_tokens": 125, "completion_tokens": 48, "total_tokens": 173,
                "prompt_tokens_details": {"text_tokens": 125, "audio_tokens": 0, "image_tokens": 0,
                                          "cached_tokens": 98},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def test_cached_tokens():
    data = recorded("stream_text.sse")
    last = orjson.loads(data[-2])
    usage_chunk = orjson.dumps({**last, "usage": CACHED_USAGE})
    ChatCompletionChunk.model_validate(orjson.loads(usage_chunk))
    _, decoder = feed_all([*data[:-2], usage_chunk, b"[DONE]"])
    assert decoder.usage == Usage(125, 48, 98)
    payload = {**answer("answer_text.json"), "usage": CACHED_USAGE}
    ChatCompletion.model_validate(payload)
    assert decode_answer(payload).usage == Usage(125, 48, 98)
    # DeepSeek's own names (api-docs.deepseek.com, "Context caching")
    deepseek = {"prompt_tokens": 50, "completion_tokens": 5, "prompt_cache_hit_tokens": 32,
                "prompt_cache_miss_tokens": 18}
    assert decode_answer({**answer("answer_text.json"), "usage": deepseek}).usage == Usage(50, 5, 32)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_deltas(field):
    """vLLM's and DeepSeek's `reasoning_content`, vLLM's newer and Groq's / OpenRouter's `reasoning`."""
    events, _ = feed_all([
        chunk({"role": "assistant", "content": None, field: ""}),
        chunk({field: "Nine is"}), chunk({field: " odd."}),
        chunk({"content": "Odd."}), chunk({}, "stop"), b"[DONE]",
    ])
    assert events == [Start("", id="chatcmpl-1", model=MODEL, created=1727346168),
                      Delta(reasoning="Nine is"), Delta(reasoning=" odd."), Delta("Odd."), Finish(STOP)]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_answer(field):
    payload = answer("answer_text.json")
    payload["choices"][0]["message"][field] = "Think first."
    assert decode_answer(payload).reasoning == "Think first."
    payload["choices"][0]["message"][field] = ""
    assert decode_answer(payload).reasoning is None


def test_mistral_content_parts():
    """Mistral's reasoning models send content as a list of parts (docs.mistral.ai, "Reasoning")."""
    events, _ = feed_all([
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "Hmm."}]}]}),
        chunk({"content": [{"type": "text", "text": "Yes."}]}), chunk({}, "stop"), b"[DONE]",
    ])
    assert events[1:] == [Delta(reasoning="Hmm."), Delta("Yes."), Finish(STOP)]
    payload = answer("answer_text.json")
    payload["choices"][0]["message"]["content"] = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "Hmm."}]}, {"type": "text", "text": "Yes."}]
    decoded = decode_answer(payload)
    assert (decoded.text, decoded.reasoning) == ("Yes.", "Hmm.")


def test_azure_prompt_filter_chunk_comes_before_the_start():
    """Azure OpenAI's first chunk holds only prompt_filter_results, with no choices and empty ids
    (learn.microsoft.com, Azure OpenAI "Content filtering", streaming)."""
    azure = orjson.dumps({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                          "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {
                              "hate": {"filtered": False, "severity": "safe"}}}]})
    events, _ = feed_all([azure, *recorded("stream_length.sse")])
    assert events[0] == Start("", id="chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh", model=MODEL, created=1727346171)


def test_groq_usage_in_x_groq():
    """Groq counts in the finishing chunk's `x_groq.usage` (console.groq.com, "Streaming")."""
    _, decoder = feed_all([
        chunk({"role": "assistant", "content": "Hi"}),
        chunk({}, "stop", x_groq={"id": "req_1", "usage": {"prompt_tokens": 20, "completion_tokens": 2,
                                                           "total_tokens": 22}}),
        b"[DONE]",
    ])
    assert decoder.usage == Usage(20, 2, 0)


def test_servers_that_repeat_ids_or_leave_out_the_index():
    events, _ = feed_all([
        chunk({"role": "assistant", "content": None}),
        # the id and name on every piece: the first piece alone carries them
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "f", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "f", "arguments": "1}"}}]}),
        # no index: a new id starts the next call, pieces without one continue it
        chunk({"tool_calls": [{"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{"}}]}),
        chunk({"tool_calls": [{"function": {"arguments": "}"}}]}),
        chunk({}, "tool_calls"), b"[DONE]",
    ])
    assert events[1:] == [
        Delta(tool_calls=(ToolCallDelta(0, '{"x":', "call_a", "f"),)),
        Delta(tool_calls=(ToolCallDelta(0, "1}"),)),
        Delta(tool_calls=(ToolCallDelta(1, "{", "call_b", "g"),)),
        Delta(tool_calls=(ToolCallDelta(1, "}"),)),
        Finish(TOOL_CALLS),
    ]


def test_a_whole_answer_in_one_chunk():
    events, decoder = feed_all([chunk({"role": "assistant", "content": "All of it."}, "stop"), b"[DONE]"])
    assert events == [Start("All of it.", id="chatcmpl-1", model=MODEL, created=1727346168), Finish(STOP)]
    assert decoder.done


def test_done_without_a_finish_reason_finishes_as_stop():
    events, decoder = feed_all([chunk({"role": "assistant", "content": "Hi"}), b"[DONE]"])
    assert events[-1] == Finish(STOP) and decoder.done


def test_done_before_any_chunk_gives_nothing():
    events, decoder = feed_all([b"[DONE]"])
    assert events == [] and decoder.done  # the router reads a stream with no first event as protocol


def test_done_with_spaces():
    _, decoder = feed_all([b" [DONE]\r"])
    assert decoder.done


def test_chunk_without_created_gets_the_decoders():
    events, _ = feed_all([orjson.dumps({"id": "x", "model": "m", "choices": [{"index": 0, "delta": {}}]})],
                         StreamDecoder(created=42))
    assert events == [Start("", id="x", model="m", created=42)]


@pytest.mark.parametrize("reason", ["function_call", "model_length", "something_new", None])
def test_other_finish_reasons(reason):
    expected = {"function_call": TOOL_CALLS, "model_length": LENGTH}.get(reason, STOP)
    payload = answer("answer_text.json")
    payload["choices"][0]["finish_reason"] = reason
    assert decode_answer(payload).finish == expected
    if reason is not None:
        events, _ = feed_all([chunk({"content": "a"}), chunk({}, reason), b"[DONE]"])
        assert events[-1] == Finish(expected)


def test_legacy_function_call_answer():
    payload = answer("answer_text.json")
    payload["choices"][0].update(message={"role": "assistant", "content": None,
                                          "function_call": {"name": "f", "arguments": "{}"}},
                                 finish_reason="function_call")
    decoded = decode_answer(payload)
    assert (decoded.tool_calls, decoded.finish) == ((ToolCall("", "f", "{}"),), TOOL_CALLS)


def test_arguments_sent_as_an_object():
    payload = answer("answer_parallel_tool_calls.json")
    payload["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = {"city": "Edinburgh"}
    assert decode_answer(payload).tool_calls[0].arguments == '{"city":"Edinburgh"}'


def test_role_on_every_chunk_is_no_event():
    events, _ = feed_all([chunk({"role": "assistant", "content": "a"}), chunk({"role": "assistant"}),
                          chunk({"role": "assistant", "content": "b"}), chunk({}, "stop"), b"[DONE]"])
    assert events[1:] == [Delta("b"), Finish(STOP)]


# --- failures -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "failure"), [
    # OpenAI's own mid-stream failure
    ({"message": "The server had an error while processing your request. Sorry about that!",
      "type": "server_error", "param": None, "code": None}, FailureClass.SERVER),
    # vLLM's ErrorResponse: the HTTP status as the code
    ({"object": "error", "message": "engine dead", "type": "InternalServerError", "param": None, "code": 500},
     FailureClass.SERVER),
    ({"message": "busy", "type": "Service Unavailable", "code": 503}, FailureClass.OVERLOADED),
    ({"message": "slow down", "type": "tokens", "code": "rate_limit_exceeded"}, FailureClass.RATE_LIMIT),
    # Groq: the model wrote a malformed tool call
    ({"message": "Failed to call a function.", "type": "invalid_request_error", "code": "tool_use_failed"},
     FailureClass.PROTOCOL),
    ("something broke", FailureClass.PROTOCOL),
])
def test_in_band_errors(error, failure):
    decoder = StreamDecoder(created=0)
    feed_all(recorded("stream_text.sse")[:3], decoder)
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(b"", orjson.dumps({"error": error}))
    assert caught.value.failure is failure
    assert caught.value.message == (error["message"] if isinstance(error, dict) else error)
    assert not decoder.done
    with pytest.raises(UpstreamError) as caught:
        decode_answer({"error": error})
    assert caught.value.failure is failure


def test_openrouter_mid_stream_error():
    """OpenRouter's mid-stream error: an `error` member and finish_reason `error`
    (openrouter.ai/docs, "Streaming: handling errors during streaming")."""
    data = orjson.dumps({"id": "cmpl-abc123", "object": "chat.completion.chunk", "created": 1234567890,
                         "model": "gpt-3.5-turbo", "provider": "openai",
                         "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
                         "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]})
    decoder = StreamDecoder(created=0)
    with pytest.raises(UpstreamError) as caught:
        feed_all([chunk({"role": "assistant", "content": "Hel"}), data], decoder)
    assert caught.value.failure is FailureClass.SERVER
    assert caught.value.message == "Provider disconnected unexpectedly"


@pytest.mark.parametrize("reason", ["error", "abort", "insufficient_system_resource"])
def test_finish_reasons_that_say_the_upstream_failed(reason):
    with pytest.raises(UpstreamError) as caught:
        feed_all([chunk({"content": "Hel"}), chunk({}, reason)])
    assert caught.value.failure is FailureClass.SERVER
    payload = answer("answer_text.json")
    payload["choices"][0]["finish_reason"] = reason
    with pytest.raises(UpstreamError) as caught:
        decode_answer(payload)
    assert caught.value.failure is FailureClass.SERVER


def test_sse_error_event():
    decoder = StreamDecoder(created=0)
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(b"error", b'{"message": "overloaded", "type": "overloaded_error"}')
    assert caught.value.failure is FailureClass.OVERLOADED


@pytest.mark.parametrize("data", [
    b"{not json", b"[1]", b'"text"',
    b'{"choices": {"index": 0}}',
    b'{"choices": [{"index": 0, "delta": ["content"]}]}',
    b'{"choices": [{"index": 0, "delta": {"content": 5}}]}',
    b'{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "0", "function": {"arguments": ""}}]}}]}',
    b'{"choices": [{"index": 0, "delta": {"tool_calls": {"index": 0}}}]}',
    b'{"choices": [{"index": 0, "delta": {}, "finish_reason": ["stop"]}]}',
    b'{"choices": [], "usage": {"prompt_tokens": {"n": 1}}}',
])
def test_malformed_chunks_are_protocol_errors(data):
    with pytest.raises(UpstreamError) as caught:
        StreamDecoder(created=0).feed(b"", data)
    assert caught.value.failure is FailureClass.PROTOCOL


def test_content_after_the_finish_is_a_protocol_error():
    decoder = StreamDecoder(created=0)
    feed_all([chunk({"content": "a"}), chunk({}, "stop")], decoder)
    assert decoder.feed(b"", chunk({}, "stop")) == []  # a repeated finish is harmless
    with pytest.raises(UpstreamError) as caught:
        decoder.feed(b"", chunk({"content": "more"}))
    assert caught.value.failure is FailureClass.PROTOCOL


@pytest.mark.parametrize("payload", [
    [], "answer", {}, {"choices": []}, {"choices": None}, {"choices": [None]}, {"choices": [{"index": 0}]},
    {"choices": [{"message": {"content": {"text": "x"}}}]},
    {"choices": [{"message": {"content": None, "tool_calls": [{"id": "c", "type": "custom"}]}}]},
    {"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}},
    {"object": "error", "message": "bad", "type": "BadRequestError", "code": 400},
])
def test_malformed_answers_are_protocol_errors(payload):
    with pytest.raises(UpstreamError) as caught:
        decode_answer(payload)
    assert caught.value.failure is FailureClass.PROTOCOL


# --- round trips through this codec's writers -------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
reasons = st.sampled_from([STOP, LENGTH, TOOL_CALLS, CONTENT_FILTER])
counts = st.integers(0, 2**31)


@st.composite
def neutral_streams(draw) -> list:
    """Start, Deltas, Finish: text, reasoning, and tool calls each of whose first piece carries
    its id and name, its pieces spread in order over the events."""
    pieces: list[ToolCallDelta] = []
    for index in range(draw(st.integers(0, 3))):
        arguments = draw(st.lists(texts, min_size=1, max_size=4))
        pieces.append(ToolCallDelta(index, arguments[0], draw(texts), draw(texts)))
        pieces += [ToolCallDelta(index, more) for more in arguments[1:]]
    deltas = draw(st.integers(0, 6))
    slots = sorted(draw(st.lists(st.integers(0, deltas), min_size=len(pieces), max_size=len(pieces))))
    calls = [tuple(piece for piece, slot in zip(pieces, slots, strict=True) if slot == i) for i in range(deltas + 1)]
    events: list = [Start(draw(texts), draw(texts), calls[0], id=draw(texts), model=draw(texts),
                          created=draw(st.integers(0, 2**40)))]
    events += [Delta(draw(texts), draw(texts), calls[i]) for i in range(1, deltas + 1)]
    return [*events, Finish(draw(reasons))]


@settings(max_examples=200, deadline=None)
@given(neutral_streams(), st.none() | st.builds(Usage, counts, counts, counts), st.booleans())
def test_stream_round_trip(events, counted, include_usage):
    """What StreamEncoder writes, StreamDecoder reads back: the same events, but for Deltas that
    carry nothing (written as an empty delta, which is no event)."""
    encoder = StreamEncoder({"stream_options": {"include_usage": True}} if include_usage else {})
    body = b"".join(map(encoder.encode, events)) + encoder.end(counted)
    decoded, decoder = feed_all(sse_data(body))
    expected = [event for event in events
                if not (type(event) is Delta and not (event.text or event.reasoning or event.tool_calls))]
    assert decoded == expected
    assert decoder.done and decoder.finished
    assert decoder.usage == ((counted or Usage()) if include_usage else None)


answers = st.builds(
    Answer, id=texts, model=texts, created=st.integers(0, 2**40), text=st.none() | texts, finish=reasons,
    usage=st.builds(Usage, counts, counts, counts),
    tool_calls=st.lists(st.builds(ToolCall, texts, texts, texts), max_size=3).map(tuple),
    reasoning=st.none() | texts.filter(bool),
)


@settings(max_examples=200, deadline=None)
@given(answers)
def test_answer_round_trip(neutral):
    assert decode_answer(orjson.loads(encode_answer(neutral))) == neutral


def test_written_answers_and_chunks_are_openai_shapes():
    """The writers the round trips go through write what the openai SDK reads."""
    neutral = Answer("chatcmpl-1", MODEL, 1, None, TOOL_CALLS, Usage(3, 2, 1), (ToolCall("call_1", "f", "{}"),),
                     "why")
    ChatCompletion.model_validate(orjson.loads(encode_answer(neutral)))
    encoder = StreamEncoder({"stream_options": {"include_usage": True}})
    events = [Start("", tool_calls=(ToolCallDelta(0, "", "call_1", "f"),), id="chatcmpl-1", model=MODEL, created=1),
              Delta("a", "b", (ToolCallDelta(0, "{}"),)), Finish(TOOL_CALLS)]
    body = b"".join(map(encoder.encode, events)) + encoder.end(Usage(3, 2, 1))
    for piece in sse_data(body)[:-1]:
        ChatCompletionChunk.model_validate(orjson.loads(piece))

