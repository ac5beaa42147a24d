"""A fake Gemini API: a real aiohttp server on 127.0.0.1 speaking the Gemini API's wire format
(v1beta), scripted per test and recording what it received.

Like tests/fakes.py, a test queues behaviours (`fake.queue(...)`); each request takes the next
one and `default` answers once the queue is empty. As the real API does, it refuses a request
without `x-goog-api-key` (403 PERMISSION_DENIED) or with a wrong one (400 INVALID_ARGUMENT,
reason API_KEY_INVALID), a body with a field the API does not know (400 "Unknown name"),
empty `contents` or parts, roles other than user and model, and a streamGenerateContent
without `alt=sse`. Shapes are those of tests/fixtures/gemini/ (see its README):

- POST /v1beta/models/{model}:generateContent -> a GenerateContentResponse;
- POST /v1beta/models/{model}:streamGenerateContent?alt=sse -> `data: {chunk}\\r\\n\\r\\n` events,
  each with the running usageMetadata, the last with finishReason; no end marker;
- POST /v1beta/models/{model}:embedContent -> {"embedding": {"values"}};
  :batchEmbedContents -> {"embeddings": [{"values"}, ...]} (each request naming models/{model});
- errors: {"error": {"code", "message", "status", "details"}}.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests.fakes import Recorder

GEMINI_KEY = "AIzaSyFakeGeminiKey-0123456789abcdefghi"
FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
MODEL_VERSION = "gemini-2.5-flash"

REQUEST_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings",
                  "cachedContent"}
GENERATION_FIELDS = {"temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences",
                     "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
                     "responseJsonSchema", "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities"}
PART_FIELDS = {"text", "thought", "thoughtSignature", "inlineData", "fileData", "functionCall", "functionResponse",
               "executableCode", "codeExecutionResult", "videoMetadata"}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def recorded(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Answer:
    """A candidate: its parts, finish reason and token counts (streamed: each text part in
    `pieces` chunks, each function call in a chunk of its own)."""

    parts: list = field(default_factory=lambda: [{"text": "Hello from Gemini"}])
    finish: str = "STOP"
    prompt_tokens: int = 11
    output_tokens: int = 5
    thoughts_tokens: int = 0
    cached_tokens: int = 0
    pieces: int = 3
    cut_after: int | None = None  # stream: the connection ends after this many chunks, no finish sent
    error_after: int | None = None  # stream: an in-band error chunk after this many chunks


def text(value: str, **extra) -> Answer:
    return Answer(parts=[{"text": value}], **extra)


def call(name: str, args: dict, *, signature: str | None = None, preamble: str | None = None, **extra) -> Answer:
    parts = [{"text": preamble}] if preamble else []
    part: dict = {"functionCall": {"name": name, "args": args}}
    if signature:
        part["thoughtSignature"] = signature
    parts.append(part)
    return Answer(parts=parts, **extra)


@dataclass
class GeminiError:
    """An error answer: `body` as the API writes it (a fixture's), with its HTTP status."""

    status: int
    body: dict
    headers: dict = field(default_factory=dict)


def rpc_error(status: int, rpc_status: str, message: str) -> GeminiError:
    return GeminiError(status, {"error": {"code": status, "message": message, "status": rpc_status}})


def split(value: str, parts: int) -> list[str]:
    size = max(1, -(-len(value) // max(1, parts)))
    return [value[i:i + size] for i in range(0, len(value), size)] or [value]


class FakeGemini(Recorder):
    def __init__(self, key: str = GEMINI_KEY) -> None:
        super().__init__()
        self.key = key
        self.default = text("Hello from Gemini")
        self.app = web.Application()
        self.app.router.add_post("/v1beta/models/{target}", self.models)

    @staticmethod
    def error(status: int, body: dict, headers: dict | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    def refusal(self, request: web.Request, body: dict, method: str) -> web.Response | None:
        """What the real API refuses before it looks at the model, answered as it does."""
        key = request.headers.get("x-goog-api-key")
        if key is None:
            return self.error(403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message":
                                              "Method doesn't allow unregistered callers (callers without "
                                              "established identity). Please use API Key or other form of API "
                                              "consumer identity to call this API."}})
        if key != self.key:
            return self.error(400, fixture("error_400_api_key.json"))
        if method in ("embedContent", "batchEmbedContents"):
            return None
        unknown = set(body) - REQUEST_FIELDS or set(body.get("generationConfig") or {}) - GENERATION_FIELDS
        if unknown:
            name = sorted(unknown)[0]
            return self.error(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                              f'Invalid JSON payload received. Unknown name "{name}": '
                                              "Cannot find field."}})
        contents = body.get("contents")
        if not contents:
            return self.error(400, fixture("error_400_invalid_argument.json"))
        for index, content in enumerate(contents):
            parts = content.get("parts")
            if content.get("role") not in ("user", "model") or not parts:
                return self.error(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                                  f"* GenerateContentRequest.contents[{index}].parts: "
                                                  "contents.parts must not be empty.\n"}})
            for part in parts:
                if set(part) - PART_FIELDS or part.get("text") == "":
                    return self.error(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                                      "Unable to submit request because it has an empty text "
                                                      "parameter or an unknown part field."}})
        return None

    async def models(self, request: web.Request) -> web.StreamResponse:
        body = await self.record(request)
        model, _, method = request.match_info["target"].partition(":")
        self.requests[-1]["model"], self.requests[-1]["method"] = model, method
        if method not in ("generateContent", "streamGenerateContent", "embedContent", "batchEmbedContents"):
            return self.error(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                              "message": f"Method {method} not found."}})
        refused = self.refusal(request, body, method)
        if refused is not None:
            return refused
        if method in ("embedContent", "batchEmbedContents"):
            return self.embed(model, method, body)
        plan = self.next()
        if callable(plan) and not isinstance(plan, (Answer, GeminiError)):
            plan = plan(body)
        if isinstance(plan, GeminiError):
            return self.error(plan.status, plan.body, plan.headers)
        if method == "streamGenerateContent":
            if request.query.get("alt") != "sse":
                return self.error(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                                  "message": "this fake streams only with alt=sse"}})
            if isinstance(plan, bytes):  # a recorded stream, answered as it is
                return web.Response(body=plan, content_type="text/event-stream")
            return await self.stream(request, plan)
        if isinstance(plan, dict):  # a recorded answer
            return web.json_response(plan)
        return web.json_response(self.answer(plan))

    @staticmethod
    def usage(plan: Answer, output: int | None = None) -> dict:
        output = plan.output_tokens if output is None else output
        usage = {"promptTokenCount": plan.prompt_tokens, "candidatesTokenCount": output,
                 "totalTokenCount": plan.prompt_tokens + output + plan.thoughts_tokens,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.prompt_tokens}]}
        if plan.thoughts_tokens:
            usage["thoughtsTokenCount"] = plan.thoughts_tokens
        if plan.cached_tokens:
            usage["cachedContentTokenCount"] = plan.cached_tokens
        return usage

    def answer(self, plan: Answer) -> dict:
        candidate: dict = {"content": {"parts": plan.parts, "role": "model"}, "finishReason": plan.finish, "index": 0}
        return {"candidates": [candidate], "usageMetadata": self.usage(plan), "modelVersion": MODEL_VERSION,
                "responseId": "Yx5GaNrIMo2Bz7IPvaWhgQw"}

    def chunks(self, plan: Answer) -> list[dict]:
        pieces: list[dict] = []
        for part in plan.parts:
            if "text" in part:
                pieces += ({**part, "text": piece} for piece in split(part["text"], plan.pieces))
            else:
                pieces.append(part)
        out = []
        for number, piece in enumerate(pieces, 1):
            candidate: dict = {"content": {"parts": [piece], "role": "model"}, "index": 0}
            if number == len(pieces):
                candidate["finishReason"] = plan.finish
            output = max(1, plan.output_tokens * number // len(pieces))
            out.append({"candidates": [candidate], "usageMetadata": self.usage(plan, output),
                        "modelVersion": MODEL_VERSION, "responseId": "c2BGaKzmAr6Lz7IPrPW2gQs"})
        return out

    async def stream(self, request: web.Request, plan: Answer) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for number, chunk in enumerate(self.chunks(plan)):
            if number == plan.cut_after:
                return response  # the handler ends: aiohttp ends the chunked body without a finish
            if number == plan.error_after:
                chunk = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                   "status": "UNAVAILABLE"}}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
            if number == plan.error_after:
                break
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    @staticmethod
    def vector(value: str, dimensions: int | None) -> list[float]:
        digest = hashlib.sha256(value.encode()).digest()
        return [round(byte / 255 - 0.5, 4) for byte in digest[:dimensions or 8]]

    def embed(self, model: str, method: str, body: dict) -> web.Response:
        if method == "embedContent":
            (part,) = body["content"]["parts"]
            return web.json_response({"embedding": {"values": self.vector(part["text"],
                                                                         body.get("outputDimensionality"))}})
        requests = body.get("requests") or []
        if any(item.get("model") != f"models/{model}" for item in requests):
            return self.error(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message":
                                              "* BatchEmbedContentsRequest.requests: every request's model "
                                              "must match the model of the method"}})
        return web.json_response({"embeddings": [
            {"values": self.vector(item["content"]["parts"][0]["text"], item.get("outputDimensionality"))}
            for item in requests]})
