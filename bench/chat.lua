-- wrk script for bench/run.sh: POST a small chat completion; at the end print
-- one "BENCH_JSON {...}" line (requests, errors, latency in microseconds).
-- Environment: BENCH_MODEL (model name in the body, default "bench").
local model = os.getenv("BENCH_MODEL") or "bench"

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = '{"model": "' .. model .. '", "messages": [{"role":"user","content":"hello"}], "max_tokens": 16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-test"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"rps":%.2f,"non2xx":%d,"sock_errors":%d,' ..
        '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
        summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
        e.status, e.connect + e.read + e.write + e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
