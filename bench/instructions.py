"""Instructions per request: what one request costs gatewayd, exactly (callgrind).

    python bench/instructions.py [--requests 1000] [--warmup 100] [--kinds chat,stream] [--gatewayd PATH]
                                 [--port-offset N] [--with YAML]

Runs `gatewayd run -c bench/gateway.bench.yaml` under
`valgrind --tool=callgrind --separate-threads=yes`, in front of a fake upstream
(a small aiohttp server in its own process answering the same fixed bodies as
bench/upstream.nginx.conf), sends --warmup requests, zeroes the counters
(`callgrind_control -z`), sends --requests sequential keep-alive requests of each
kind (chat, stream, embeddings; messages and responses, relayed and translated; chat translated
for Anthropic, Gemini and Bedrock upstreams;
chat-limited: a key with every limit, to a deployment with every quota;
ordered and ucb: the same chat to an alias of two deployments under each strategy),
dumps the counters (`callgrind_control -d`) after each kind and divides the main
thread's instructions by the count; it also gives that figure without what the
timers and the garbage collector's collections did (`clock_driven_total`).

Times on a shared machine drift from run to run; instruction counts move by
about 1 % (the timers fire by the clock, and a collection falls in one
thousand requests or the next), so two builds compare closely (run it once per
build, on the same machine), and more closely by the figures without timers
and collections (which leave out what a change adds to those). Under valgrind a request takes ~50x
longer, so the 10 ms deadline sweep and the 0.1 s access-log flush fire more
often per request than at full speed: compare figures from this script with
each other, not with the docs' "as at full speed" row.
Needs valgrind (`apt-get install valgrind`); ports 18080, 18100, 18101 free (each shifted by
--port-offset, so that two runs can share a machine).
"""

from __future__ import annotations

import argparse
import glob
import http.client
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "bench" / "gateway.bench.yaml"
KEY = "sk-test"

UPSTREAM = r'''
import sys
from aiohttp import web
answer = sys.argv[1].encode()
events = sys.argv[2].encode()
embedding = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3]}],' \
            b'"model":"text-embedding-3-small","usage":{"prompt_tokens":2,"total_tokens":2}}'
# the same answer as Anthropic's Messages API words it
message = b'{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",' \
          b'"model":"claude-haiku-4-5-20251001","content":[{"type":"text",' \
          b'"text":"Hello! How can I assist you today? Let me know what you need."}],' \
          b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":8,' \
          b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":15,' \
          b'"service_tier":"standard"}}'
# and as the Gemini API words it (generateContent)
generated = b'{"candidates":[{"content":{"parts":[{"text":"Hello! How can I assist you today? Let me know ' \
            b'what you need."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":' \
            b'{"promptTokenCount":8,"candidatesTokenCount":15,"totalTokenCount":23,"promptTokensDetails":' \
            b'[{"modality":"TEXT","tokenCount":8}]},"modelVersion":"gemini-2.5-flash",' \
            b'"responseId":"Yx5GaNrIMo2Bz7IPvaWhgQw"}'
# and as Bedrock's Converse API words it
conversed = b'{"metrics":{"latencyMs":268},"output":{"message":{"content":[{"text":"Hello! How can I assist ' \
            b'you today? Let me know what you need."}],"role":"assistant"}},"stopReason":"end_turn",' \
            b'"usage":{"inputTokens":8,"outputTokens":15,"totalTokens":23}}'
# and as OpenAI's Responses API words it
response = b'{"id":"resp_689a0b2545288193953c892439b42e2800b2e36c65a1fd4b","object":"response",' \
           b'"created_at":1754925861,"status":"completed","error":null,"incomplete_details":null,' \
           b'"model":"gpt-4o-mini-2024-07-18","output":[{"id":"msg_689a0b2637b08193ac478e568f49e3f9",' \
           b'"type":"message","status":"completed","content":[{"type":"output_text","annotations":[],' \
           b'"logprobs":[],"text":"Hello! How can I assist you today? Let me know what you need."}],' \
           b'"role":"assistant"}],"parallel_tool_calls":true,"previous_response_id":null,"store":true,' \
           b'"usage":{"input_tokens":8,"input_tokens_details":{"cached_tokens":0},"output_tokens":15,' \
           b'"output_tokens_details":{"reasoning_tokens":0},"total_tokens":23},"metadata":{}}'
async def chat(request):
    await request.read()
    return web.Response(body=answer, content_type="application/json")
async def stream(request):
    await request.read()
    return web.Response(body=events, content_type="text/event-stream")
async def embeddings(request):
    await request.read()
    return web.Response(body=embedding, content_type="application/json")
async def messages(request):
    await request.read()
    return web.Response(body=message, content_type="application/json")
async def responses(request):
    await request.read()
    return web.Response(body=response, content_type="application/json")
async def generate(request):
    await request.read()
    return web.Response(body=generated, content_type="application/json")
async def converse(request):
    await request.read()
    return web.Response(body=conversed, content_type="application/json")
async def main():
    offset = int(sys.argv[3])
    for port, handler in ((18100 + offset, chat), (18101 + offset, stream)):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        app.router.add_post("/v1/embeddings", embeddings)
        app.router.add_post("/v1/messages", messages)
        app.router.add_post("/v1/responses", responses)
        app.router.add_post("/v1beta/models/{target}", generate)
        app.router.add_post("/model/{model}/converse", converse)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    import asyncio
    await asyncio.Event().wait()
import asyncio
asyncio.run(main())
'''


def fixed_bodies() -> tuple[str, str]:
    """The JSON answer and the SSE body bench/upstream.nginx.conf returns."""
    text = (ROOT / "bench" / "upstream.nginx.conf").read_text()
    bodies = [part.split("';", 1)[0] for part in text.split("return 200 '")[1:]]
    return bodies[0], bodies[1]


def request(conn: http.client.HTTPConnection, path: str, body: dict, key: str = KEY) -> http.client.HTTPResponse:
    """One request, its answer read whole; the response (its headers) for a caller that wants them."""
    conn.request("POST", path, json.dumps(body), {"Authorization": f"Bearer {key}",
                                                  "Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise SystemExit(f"{path} answered {response.status}: {data[:300]!r}")
    return response


KINDS = {
    "chat": ("/v1/chat/completions", {"model": "bench", "messages": [{"role": "user", "content": "hello"}]}),
    "stream": ("/v1/chat/completions", {"model": "bench-stream", "stream": True,
                                        "messages": [{"role": "user", "content": "hello"}]}),
    "embeddings": ("/v1/embeddings", {"model": "bench", "input": "hello"}),
    # an Anthropic client: to an Anthropic upstream (relayed), to an OpenAI one (translated)
    "messages": ("/v1/messages", {"model": "bench-anthropic", "max_tokens": 100,
                                  "messages": [{"role": "user", "content": "hello"}]}),
    "messages-translated": ("/v1/messages", {"model": "bench", "max_tokens": 100,
                                             "messages": [{"role": "user", "content": "hello"}]}),
    # a Responses client: to an OpenAI upstream (relayed), to an Anthropic one (translated)
    "responses": ("/v1/responses", {"model": "bench", "input": "hello"}),
    "responses-translated": ("/v1/responses", {"model": "bench-anthropic", "input": "hello",
                                               "max_output_tokens": 100}),
    # an OpenAI client translated for an upstream of another format: Anthropic's, Gemini's
    "chat-anthropic": ("/v1/chat/completions", {"model": "bench-anthropic", "max_tokens": 100,
                                                "messages": [{"role": "user", "content": "hello"}]}),
    "chat-gemini": ("/v1/chat/completions", {"model": "bench-gemini", "max_tokens": 100,
                                             "messages": [{"role": "user", "content": "hello"}]}),
    "chat-bedrock": ("/v1/chat/completions", {"model": "bench-bedrock", "max_tokens": 100,
                                              "messages": [{"role": "user", "content": "hello"}]}),
    # a key with every limit, to a deployment with a quota of every kind
    "chat-limited": ("/v1/chat/completions", {"model": "bench-limited",
                                              "messages": [{"role": "user", "content": "hello"}]}),
}
KEYS = {"chat-limited": "sk-test-limited"}  # the key each kind sends, when not KEY
for _strategy in ("ordered", "ucb"):  # two deployments, one upstream: what ordering them costs
    KINDS[_strategy] = ("/v1/chat/completions", {"model": f"bench-{_strategy}",
                                                 "messages": [{"role": "user", "content": "hello"}]})

# Added to bench/gateway.bench.yaml when their kinds run: deployments of their own (identities no
# other kind uses). A `ucb` alias subscribes its outcome listener, which every request then pays,
# so it is there only when the `ucb` kind runs (and `ordered`, measured beside it, pays it too).
STRATEGY_MODELS = {"bench-model-a": {"provider": "up", "model": "gpt-4o-mini-a"},
                   "bench-model-b": {"provider": "up", "model": "gpt-4o-mini-b"}}
STRATEGY_ALIASES = {f"bench-{strategy}": {"targets": list(STRATEGY_MODELS), "strategy": strategy}
                    for strategy in ("ordered", "ucb")}


def bench_config(offset: int, kinds: list[str], overrides: dict | None = None) -> str:
    """bench/gateway.bench.yaml with what `kinds` need beyond it (the strategies' aliases, the
    Gemini and Bedrock deployments), its ports shifted by `offset`, and `overrides` (`--with`)
    set over its top-level sections, key by key."""
    text = CONFIG.read_text()
    for port in (18080, 18100, 18101):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{port + offset}")
    document = yaml.safe_load(text)
    strategies = [strategy for strategy in STRATEGY_ALIASES if strategy.removeprefix("bench-") in kinds]
    if strategies:
        document["models"].update(STRATEGY_MODELS)
        document["aliases"].update({name: STRATEGY_ALIASES[name] for name in strategies})
    if "chat-gemini" in kinds:  # the fake upstream answers generateContent too
        document["providers"]["up-gemini"] = {"type": "gemini", "base_url": f"http://127.0.0.1:{18100 + offset}",
                                              "api_key": "sk-bench"}
        document["models"]["bench-gemini"] = {"provider": "up-gemini", "model": "gemini-2.5-flash"}
    if "chat-bedrock" in kinds:  # each request signed (SigV4) with made-up keys, which the fake does not check
        document["providers"]["up-bedrock"] = {"type": "bedrock", "base_url": f"http://127.0.0.1:{18100 + offset}",
                                               "region": "us-east-1", "access_key_id": "AKIAIOSFODNN7BENCH00",
                                               "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYBENCHKEY0"}
        document["models"]["bench-bedrock"] = {"provider": "up-bedrock",
                                               "model": "anthropic.claude-3-5-haiku-20241022-v1:0"}
    for section, values in (overrides or {}).items():
        document[section] = {**(document.get(section) or {}), **values}
    return json.dumps(document)


def stop(process: subprocess.Popen | None, wait: float = 30) -> None:
    """SIGTERM, and SIGKILL when it has not exited within `wait` seconds."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(gateway: subprocess.Popen, port: int, seconds: float, log: str) -> None:
    """Return once the gatewayd at 127.0.0.1:`port` answers /healthz; exit if it died or took
    longer than `seconds` (under valgrind it starts in tens of seconds)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=min(60.0, seconds))
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline or gateway.poll() is not None:
            raise SystemExit(f"gatewayd did not start; see {log}")
        time.sleep(0.2)


def newest_dump(out_dir: str, pid: int) -> str:
    """The newest dump of the gateway's main thread (callgrind.out.PID.N-01)."""
    dumps = glob.glob(f"{out_dir}/callgrind.out.{pid}.*-01")
    return max(dumps, key=lambda path: int(path.rsplit(".", 1)[1].split("-")[0]))


def main_thread_total(out_dir: str, pid: int) -> int:
    """Instructions of the gateway's main thread in the newest dump."""
    newest = newest_dump(out_dir, pid)
    for line in Path(newest).read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {newest}")


def clock_driven_total(out_dir: str, pid: int) -> int:
    """Instructions the newest dump spent in what comes by the clock or by allocation counts, not
    with each request: the event loop's timers (the deadline sweep, the access log's flush,
    which fire ~50x more often per request under valgrind than at full speed, and more often
    still when the machine is busy) and the garbage collector's collections (one falls in one
    thousand requests or the next). Without them, two builds compare to within a few hundred
    instructions a request even when their figures with them move by 1 %."""
    report = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                             newest_dump(out_dir, pid)], check=True, capture_output=True, text=True).stdout
    total = 0
    for line in report.splitlines():  # inclusive costs: every timer and every collection, whoever came first
        if "timer.c:uv__run_timers " in line or "gcmodule.c:gc_collect_main " in line:
            total += int(line.split()[0].replace(",", ""))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--kinds", default=",".join(KINDS), help="which kinds, comma-separated (default: all)")
    beside_python = str(Path(sys.executable).with_name("gatewayd"))
    parser.add_argument("--gatewayd", default=shutil.which("gatewayd") or beside_python,
                        help="the gatewayd to measure (default: the one on PATH, else beside this python)")
    parser.add_argument("--port-offset", type=int, default=0, help="added to every port the bench listens on")
    parser.add_argument("--with", dest="overrides", type=yaml.safe_load, default=None, metavar="YAML",
                        help="sections set over the config, to measure a feature on and off, e.g. "
                        "'{server: {recent_requests: 0}}'")
    args = parser.parse_args()
    answer, events = fixed_bodies()
    out_dir = tempfile.mkdtemp(prefix="gatewayd-callgrind-")
    offset = args.port_offset
    config = Path(out_dir) / CONFIG.name
    config.write_text(bench_config(offset, args.kinds.split(","), args.overrides))
    port = 18080 + offset
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, answer, events, str(offset)], stdout=subprocess.PIPE)
    gateway = None
    try:
        if upstream.stdout.readline().strip() != b"ready":
            raise SystemExit("the fake upstream did not start")
        gateway = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out_dir}/callgrind.out.%p", args.gatewayd, "run", "-c", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(f"{out_dir}/gatewayd.log", "wb"), cwd=ROOT)
        wait_healthy(gateway, port, 120, f"{out_dir}/gatewayd.log")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for kind in args.kinds.split(","):
            path, body = KINDS[kind]
            key = KEYS.get(kind, KEY)
            for _ in range(args.warmup):
                request(conn, path, body, key)
            subprocess.run(["callgrind_control", "-z", str(gateway.pid)], check=True, capture_output=True)
            for _ in range(args.requests):
                request(conn, path, body, key)
            subprocess.run(["callgrind_control", "-d", str(gateway.pid)], check=True, capture_output=True)
            total = main_thread_total(out_dir, gateway.pid)
            clocked = clock_driven_total(out_dir, gateway.pid)
            print(f"{kind}: {total / args.requests:,.0f} instructions per request ({args.requests} requests; "
                  f"{(total - clocked) / args.requests:,.0f} without timers and collections)", flush=True)
    finally:
        for process in (gateway, upstream):
            stop(process)
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
