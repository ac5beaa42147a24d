#!/usr/bin/env python3
"""Turn bench/run.sh's runs.jsonl into Markdown tables (standard library only).

Medians over rounds, errors summed, "noisy ±N%" when a round's RPS (or stream
TTFB p50) is more than 10 % away from the median.
"""
import json
import statistics
import sys
from collections import defaultdict


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    m = med(values)
    return max(abs(v - m) / m for v in values) if len(values) > 1 and m else 0.0


def f(v, digits=2):
    return "–" if v is None else f"{v:,.{digits}f}"


def main(path):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    wrk, stream, notes = defaultdict(list), defaultdict(list), []
    for r in runs:
        if r["kind"] == "wrk":
            wrk[(r["conns"], r["target"])].append(r)
        elif r["kind"] == "stream":
            stream[r["target"]].append(r)
        else:
            notes.append(r)
    out = []
    if wrk:
        out += ["### POST /v1/chat/completions (wrk, closed loop)", "",
                "| target | conns | RPS | p50 ms | p90 ms | p99 ms | errors | ×direct | +p50 ms "
                "| CPU/req ms | RSS MB | notes |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = {}
        for (conns, target), rs in sorted(wrk.items(), key=lambda kv: (kv[0][0], kv[0][1] != "direct")):
            rps = med([r["rps"] for r in rs])
            p50 = med([r["p50_us"] / 1e3 for r in rs])
            if target == "direct":
                base[conns] = (rps, p50)
            d_rps, d_p50 = base.get(conns, (None, None))
            cpu = med([r["cpu_s"] * 1e3 / r["requests"] for r in rs
                       if r.get("cpu_s") is not None and r["requests"]])
            rss = max((r["rss_kb"] for r in rs if r.get("rss_kb")), default=None)
            errors = sum(r["non2xx"] + r["sock_errors"] for r in rs)
            note = [f"noisy ±{spread([r['rps'] for r in rs]) * 100:.0f}%"] \
                if spread([r["rps"] for r in rs]) > 0.10 else []
            if errors:
                note.insert(0, "**ERRORS**")
            out.append("| " + " | ".join([
                target, str(conns), f(rps, 0), f(p50), f(med([r["p90_us"] / 1e3 for r in rs])),
                f(med([r["p99_us"] / 1e3 for r in rs])), str(errors),
                "1" if target == "direct" else (f(rps / d_rps, 3) if d_rps else "–"),
                "–" if target == "direct" or d_p50 is None else f(p50 - d_p50),
                f(cpu), f(rss / 1024, 0) if rss else "–", " ".join(note)]) + " |")
        out.append("")
    if stream:
        out += ["### Streaming: sequential SSE requests, one keep-alive connection (ms)", "",
                "| target | ok/requests | errors | TTFB p50 | TTFB p90 | total p50 | +TTFB vs direct | notes |",
                "|---|---|---|---|---|---|---|---|"]
        d_ttfb = med([r["ttfb_p50"] for r in stream.get("direct", [])])
        for target, rs in sorted(stream.items(), key=lambda kv: kv[0] != "direct"):
            ttfb = med([r["ttfb_p50"] for r in rs])
            errors = sum(r["errors"] for r in rs)
            kinds = defaultdict(int)
            for r in rs:
                for k, n in r["error_kinds"].items():
                    kinds[k] += n
            note = [f"**ERRORS** {dict(kinds)}"] if errors else []
            if spread([r["ttfb_p50"] for r in rs]) > 0.10:
                note.append(f"noisy ±{spread([r['ttfb_p50'] for r in rs]) * 100:.0f}%")
            out.append("| " + " | ".join([
                target, f"{sum(r['ok'] for r in rs)}/{sum(r['requests'] for r in rs)}", str(errors),
                f(ttfb), f(med([r["ttfb_p90"] for r in rs])), f(med([r["total_p50"] for r in rs])),
                "–" if target == "direct" or ttfb is None or d_ttfb is None else f(ttfb - d_ttfb),
                " ".join(note)]) + " |")
        out.append("")
    for n in notes:
        out.append(f"- **{n['target']}**: {n['message']}")
    print("\n".join(out).rstrip())


if __name__ == "__main__":
    main(sys.argv[1])
