#!/usr/bin/env python3
"""Sequential SSE client for bench/run.sh (standard library only).

One keep-alive connection; WARMUP + N requests with "stream": true, one at a
time. Per request: TTFB = first "data:" event received, total = body complete,
both from just before the request is sent. Checks that the deltas spell
EXPECT. Prints one line "BENCH_JSON {...}"; failures are counted, not raised.
"""
import argparse
import http.client
import json
import statistics
import time
import urllib.parse

EXPECT = "Hello! How can I assist you today?"


def one(conn, path, body, headers):
    t0 = time.perf_counter()
    conn.request("POST", path, body=body, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        resp.read()
        return {"error": f"HTTP {resp.status}"}
    ttfb, text, done = None, [], False
    while line := resp.readline():
        if not line.startswith(b"data:"):
            continue
        if ttfb is None:
            ttfb = time.perf_counter() - t0
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        for choice in json.loads(data).get("choices") or []:
            text.append((choice.get("delta") or {}).get("content") or "")
    resp.read()
    total = time.perf_counter() - t0
    if not done or "".join(text) != EXPECT:
        return {"error": "bad stream"}
    return {"ttfb": ttfb * 1e3, "total": total * 1e3}


def pct(values, p):
    if len(values) < 2:
        return round(values[0], 3) if values else None
    return round(statistics.quantiles(values, n=100, method="inclusive")[p - 1], 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url")
    ap.add_argument("--model", default="bench-stream")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    args = ap.parse_args()
    u = urllib.parse.urlsplit(args.url)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    body = json.dumps({"model": args.model, "messages": [{"role": "user", "content": "hello"}],
                       "max_tokens": 16, "stream": True})
    conn, ttfb, total, errors = None, [], [], {}
    for i in range(args.warmup + args.n):
        conn = conn or http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        try:
            r = one(conn, u.path, body, headers)
        except Exception as exc:  # reset, timeout, bad JSON: count it, reconnect
            r = {"error": type(exc).__name__}
            conn.close()
            conn = None
        if i < args.warmup:
            continue
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
        else:
            ttfb.append(r["ttfb"])
            total.append(r["total"])
    print("BENCH_JSON " + json.dumps({
        "requests": args.n, "ok": len(ttfb), "errors": sum(errors.values()), "error_kinds": errors,
        "ttfb_p50": pct(ttfb, 50), "ttfb_p90": pct(ttfb, 90), "ttfb_p99": pct(ttfb, 99),
        "total_p50": pct(total, 50), "total_p90": pct(total, 90)}), flush=True)


if __name__ == "__main__":
    main()
