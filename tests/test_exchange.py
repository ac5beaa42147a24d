"""A client's request as the router and the adapters see it (core/exchange.py)."""

from __future__ import annotations

import pytest

from gatewayd.daemon.core.conversation import Chat, Embed
from gatewayd.daemon.core.exchange import Operation, Request, WireFormat
from gatewayd.daemon.formats.openai import decode_chat, decode_embed

BODY = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}


def counting(decode):
    calls = []

    def counted(body):
        calls.append(body)
        return decode(body)

    return counted, calls


def test_the_neutral_request_is_decoded_once_on_first_use():
    decode, calls = counting(decode_chat)
    request = Request(Operation.CHAT, WireFormat.OPENAI, BODY, decode=decode)
    assert calls == []
    chat = request.chat()
    assert isinstance(chat, Chat) and chat.messages[0].content == "hi"
    assert request.chat() is chat and len(calls) == 1


@pytest.mark.parametrize(("in_body", "streams"), [(None, True), (True, False), (False, True), (True, True)])
def test_whether_the_chat_streams_is_the_requests_to_say(in_body, streams):
    body = BODY if in_body is None else {**BODY, "stream": in_body}
    request = Request(Operation.CHAT, WireFormat.OPENAI, body, stream=streams, decode=decode_chat)
    assert request.chat().stream is streams
    assert request.capability == ("stream" if streams else "chat")


def test_an_embeddings_request_decodes_as_embed_and_never_as_chat():
    request = Request(Operation.EMBEDDINGS, WireFormat.OPENAI, {"model": "e", "input": ["a", "b"], "dimensions": 8},
                      decode=decode_embed)
    assert request.embed() == Embed("e", ["a", "b"], 8)
    assert request.capability == "embeddings"
    with pytest.raises(TypeError):
        Request(Operation.EMBEDDINGS, WireFormat.OPENAI, {"input": "a"}, decode=decode_embed).chat()
    with pytest.raises(TypeError):
        Request(Operation.CHAT, WireFormat.OPENAI, BODY).chat()  # no decoder given
