#!/usr/bin/env bash
# gatewayd overhead benchmark: gatewayd vs. wrk straight to a fake nginx
# upstream, plus streamed time-to-first-byte. See bench/README.md.
# Everything it starts is stopped by PID (process group) when it exits.
set -uo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH")
PATH=$PATH:/usr/sbin:/sbin

usage() {
    cat <<'EOF'
Usage: bench/run.sh [options]

  --rounds N            interleaved rounds; the table shows medians      (3)
  --duration S          seconds per measured wrk run                     (10)
  --warmup S            discarded wrk run per target before round 1      (3)
  --conns "1 64"        wrk connection counts                            ("1 64")
  --stream-requests N   sequential streamed requests per target/round    (200; 0 = skip)
  --gw-cpus LIST        CPUs for gatewayd (taskset -c)                   (0)
  --load-cpus LIST      CPUs for nginx, wrk and the stream client        (1)
  --config FILE         gatewayd config                                  (bench/gateway.bench.yaml)
  --targets "A B"       rows to measure: direct, gatewayd                ("direct gatewayd")
  --quick               1 round, 3 s runs, 2 s warm-up, 50 streamed requests
  -h, --help

Environment: GATEWAYD=/path/to/gatewayd (default: `gatewayd` on PATH, else a
venv in bench/.venv with `pip install -e .`).
EOF
}

ROUNDS=3 DURATION=10 WARMUP=3 CONNS="1 64" STREAM_N=200 GW_CPUS=0 LOAD_CPUS=1
CONFIG=$BENCH/gateway.bench.yaml TARGETS="direct gatewayd"
log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --warmup) WARMUP=${2:?}; shift 2 ;;
        --conns) CONNS=${2:?}; shift 2 ;;
        --stream-requests) STREAM_N=${2:?}; shift 2 ;;
        --gw-cpus) GW_CPUS=${2:?}; shift 2 ;;
        --load-cpus) LOAD_CPUS=${2:?}; shift 2 ;;
        --config) CONFIG=$(realpath -m "${2:?}"); shift 2 ;;
        --targets) TARGETS=${2:?}; shift 2 ;;
        --quick) ROUNDS=1 DURATION=3 WARMUP=2 STREAM_N=50; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
for n in "$ROUNDS" "$DURATION" "$WARMUP" "$STREAM_N" $CONNS; do
    [[ $n =~ ^[0-9]+$ ]] || die "not a number: $n"
done
for t in $TARGETS; do [[ $t == direct || $t == gatewayd ]] || die "unknown target: $t"; done
[[ " $TARGETS " == *" gatewayd "* ]] && WANT_GW=1 || WANT_GW=0

# ---- tools: nginx + wrk from Debian packages, gatewayd from PATH or a venv ---------
SUDO=()
(($(id -u) == 0)) || SUDO=(sudo)
apt_install() { timeout 900 "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; }
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    command -v apt-get >/dev/null || die "nginx and wrk are needed; install them (no apt-get here)"
    log "installing nginx and wrk (apt-get)"
    apt_install nginx-light wrk || { timeout 300 "${SUDO[@]}" apt-get update -q >&2; apt_install nginx-light wrk; } ||
        apt_install nginx wrk || die "could not install nginx and wrk"
fi
for tool in nginx wrk taskset setsid curl python3 ps; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
if ((WANT_GW)); then
    if [[ -n ${GATEWAYD:-} ]]; then
        [[ -x $GATEWAYD ]] || die "GATEWAYD=$GATEWAYD is not executable"
    elif command -v gatewayd >/dev/null; then
        GATEWAYD=$(command -v gatewayd)
    else
        if [[ ! -x $BENCH/.venv/bin/gatewayd ]]; then
            log "gatewayd not on PATH: creating bench/.venv (pip install -e .)"
            timeout 120 python3 -m venv "$BENCH/.venv" || die "python3 -m venv failed"
            (cd "$REPO" && timeout 900 "$BENCH/.venv/bin/pip" install -q -e ".") || die "pip install failed"
        fi
        GATEWAYD=$BENCH/.venv/bin/gatewayd
    fi
    [[ -f $CONFIG ]] || die "no config $CONFIG"
    listen=$(sed -n 's/^[[:space:]]\{1,\}listen:[[:space:]]*\([0-9.]\{1,\}:[0-9]\{1,\}\).*/\1/p' "$CONFIG" | head -n 1)
    [[ -n $listen ]] || die "$CONFIG: no 'listen: HOST:PORT' found"
    GW_HOST=${listen%:*} GW_PORT=${listen##*:}
    timeout 60 "$GATEWAYD" check -c "$CONFIG" >&2 || die "gatewayd check -c $CONFIG failed"
fi
taskset -c "$GW_CPUS" true 2>/dev/null && taskset -c "$LOAD_CPUS" true 2>/dev/null ||
    die "cannot pin to CPUs '$GW_CPUS' / '$LOAD_CPUS' (this machine has $(nproc)); see --gw-cpus/--load-cpus"
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
for p in 18100 18101; do port_open 127.0.0.1 $p && die "port $p is already in use"; done
((WANT_GW)) && port_open "$GW_HOST" "$GW_PORT" && die "port $GW_PORT is already in use"

# ---- run dir, results, process bookkeeping ----------------------------------------
STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$BENCH/results/$STAMP
RUN=$(mktemp -d "${TMPDIR:-/tmp}/gatewayd-bench.XXXXXX") || die "mktemp failed"
mkdir -p "$OUT/logs" "$RUN/tmp" || die "cannot create $OUT"
RUNS=$OUT/runs.jsonl
: >"$RUNS"
HZ=$(getconf CLK_TCK)
declare -a PIDS=()
NGINX_PID="" GW_PID=""

# start NAME CPUS LOGFILE CMD...: own session + process group (PGID = PID), pinned.
start() {
    local name=$1 cpus=$2 logf=$3
    shift 3
    setsid taskset -c "$cpus" "$@" >"$logf" 2>&1 </dev/null &
    STARTED=$!
    PIDS+=("$STARTED")
    log "started $name pid=$STARTED on CPU $cpus"
}
alive() { ps -o stat= --sid "$1" 2>/dev/null | grep -qv '^Z'; }   # any live process in its session
stop() { # PID: TERM its process group, KILL after 10 s
    local pid=$1 i
    kill -TERM -- "-$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && { log "pid $pid still running after 10 s: KILL"; kill -KILL -- "-$pid" 2>/dev/null; }
    wait "$pid" 2>/dev/null
}
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop "${PIDS[i]}"; done
    if [[ -f $RUN/gatewayd.log ]]; then   # the access log is big: keep its start and end
        { echo "# $(wc -l <"$RUN/gatewayd.log") lines; first and last 100"; head -n 100 "$RUN/gatewayd.log"
          echo "# ..."; tail -n 100 "$RUN/gatewayd.log"; } >"$OUT/logs/gatewayd.log"
    fi
    cp "$RUN"/nginx-error.log "$OUT/logs/" 2>/dev/null
    rm -rf "$RUN"
    exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# CPU ticks (utime+stime) and RSS (kB) summed over the process tree (its session).
tree_pids() { ps -o pid= --sid "$1" 2>/dev/null; }
cpu_ticks() {
    local p t=0 s
    for p in $(tree_pids "$1"); do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }   # fields after "pid (comm) ": utime and stime are the 12th and 13th
        read -r -a f <<<"$s"
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}
rss_kb() {
    local p t=0 v
    for p in $(tree_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
settle() { # PID: wait (at most 10 s) until it has finished the requests left in flight
    local a b i calm=0
    a=$(cpu_ticks "$1")
    for ((i = 0; i < 40 && calm < 2; i++)); do
        sleep 0.25
        b=$(cpu_ticks "$1")
        ((b - a <= 1)) && calm=$((calm + 1)) || calm=0
        a=$b
    done
}
note() { printf '{"kind":"note","target":"%s","message":"%s"}\n' "$1" "$2" >>"$RUNS"; log "$1: $2"; }

port_of() { [[ $1 == direct ]] && echo "${2:-18100}" || echo "$GW_PORT"; }
host_of() { [[ $1 == direct ]] && echo 127.0.0.1 || echo "$GW_HOST"; }
model_of() { if [[ $1 == direct ]]; then echo bench-model; elif [[ ${2:-} == stream ]]; then echo bench-stream; else echo bench; fi; }

VERSIONS='import sys, importlib.metadata as m
found = []
for p in ("gatewayd", "aiohttp", "uvloop", "orjson"):
    try:
        found.append(p + " " + m.version(p))
    except m.PackageNotFoundError:
        pass
print("Python " + sys.version.split()[0] + ", " + ", ".join(found))'
# ---- environment -------------------------------------------------------------------
{
    echo "- date: $(date -Is); host: $(uname -sr), $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p')"
    echo "- nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2), stream client $(python3 --version)"
    if ((WANT_GW)); then
        echo "- gatewayd: $GATEWAYD, config $CONFIG, commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')"
        gw_python=$(head -n 1 "$GATEWAYD" | sed -n 's/^#![[:space:]]*//p')
        echo "  ($(${gw_python:-python3} -c "$VERSIONS" 2>/dev/null))"
    fi
    echo "- settings: rounds=$ROUNDS duration=${DURATION}s warm-up=${WARMUP}s conns=[$CONNS] stream-requests=$STREAM_N; gatewayd on CPU $GW_CPUS, nginx/wrk/stream client on CPU $LOAD_CPUS"
} >"$OUT/env.md"
cat "$OUT/env.md" >&2

# ---- fake upstream and gateway -------------------------------------------------------
wait_http() { # NAME PID URL: until any HTTP answer, at most 30 s
    local i
    for ((i = 0; i < 120; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' "$3") != 000 ]] && return 0
        sleep 0.25
    done
    return 1
}
start nginx "$LOAD_CPUS" "$OUT/logs/nginx.out" \
    nginx -p "$RUN/" -e "$RUN/nginx-error.log" -c "$BENCH/upstream.nginx.conf" -g 'daemon off;'
NGINX_PID=$STARTED
wait_http nginx "$NGINX_PID" http://127.0.0.1:18100/ && wait_http nginx "$NGINX_PID" http://127.0.0.1:18101/ ||
    { cat "$OUT/logs/nginx.out" "$RUN/nginx-error.log" >&2 2>/dev/null; die "nginx did not start"; }
if ((WANT_GW)); then
    start gatewayd "$GW_CPUS" "$RUN/gatewayd.log" "$GATEWAYD" run -c "$CONFIG"
    GW_PID=$STARTED
    wait_http gatewayd "$GW_PID" "http://$GW_HOST:$GW_PORT/healthz" ||
        { tail -n 30 "$RUN/gatewayd.log" >&2; die "gatewayd did not come up (it exited, or GET /healthz got no answer within 30 s)"; }
fi

# One request of each kind per target: a broken route shows up here, not only as errors.
for t in $TARGETS; do
    body=$(curl -s -m 10 -w '\n%{http_code}' -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-test' \
        -d "{\"model\": \"$(model_of "$t")\", \"messages\": [{\"role\":\"user\",\"content\":\"hello\"}], \"max_tokens\": 16}" \
        "http://$(host_of "$t"):$(port_of "$t")/v1/chat/completions")
    [[ ${body##*$'\n'} == 200 && $body == *'Let me know what you need.'* ]] ||
        note "$t" "functional check failed: HTTP ${body##*$'\n'} (JSON request)"
    body=$(curl -s -N -m 10 -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-test' \
        -d "{\"model\": \"$(model_of "$t" stream)\", \"messages\": [{\"role\":\"user\",\"content\":\"hello\"}], \"stream\": true}" \
        "http://$(host_of "$t"):$(port_of "$t" 18101)/v1/chat/completions")
    [[ $body == *'data: [DONE]'* ]] || note "$t" "functional check failed: no 'data: [DONE]' in the streamed answer"
done

# ---- measurements ---------------------------------------------------------------------
wrk_run() { # TARGET CONNS SECONDS OUTFILE
    timeout --foreground $(($3 + 30)) taskset -c "$LOAD_CPUS" env BENCH_MODEL="$(model_of "$1")" \
        wrk -t1 -c"$2" -d"$3s" --latency --timeout 10s -s "$BENCH/chat.lua" \
        "http://$(host_of "$1"):$(port_of "$1")" >"$4" 2>&1
}
gw_alive() { [[ $1 == direct ]] || kill -0 "$GW_PID" 2>/dev/null || { tail -n 30 "$RUN/gatewayd.log" >&2; die "gatewayd died"; }; }

measure() { # TARGET CONNS ROUND
    local t=$1 c=$2 r=$3 wout="$OUT/logs/wrk-r$3-c$2-$1.txt" cpu0=0 cpu1 extra json
    [[ $t == gatewayd ]] && cpu0=$(cpu_ticks "$GW_PID")
    wrk_run "$t" "$c" "$DURATION" "$wout"
    gw_alive "$t"
    extra='"cpu_s":null,"rss_kb":null'
    if [[ $t == gatewayd ]]; then
        settle "$GW_PID"
        cpu1=$(cpu_ticks "$GW_PID")
        extra="\"cpu_s\":$(awk -v d=$((cpu1 - cpu0)) -v hz="$HZ" 'BEGIN {printf "%.3f", d / hz}'),\"rss_kb\":$(rss_kb "$GW_PID")"
    fi
    json=$(sed -n 's/^BENCH_JSON //p' "$wout" | head -n 1)
    [[ -n $json ]] || { note "$t" "round $r c=$c: wrk failed (see logs/$(basename "$wout"))"; return; }
    echo "{\"kind\":\"wrk\",\"target\":\"$t\",\"conns\":$c,\"round\":$r,$extra,${json#\{}" >>"$RUNS"
    log "round $r c=$c $t: $(sed 's/.*"rps":\([0-9.]*\).*"p50_us":\([0-9]*\).*/\1 req\/s, p50 \2 µs/' <<<"$json")"
}
measure_stream() { # TARGET ROUND
    local t=$1 r=$2 sout="$OUT/logs/stream-r$2-$1.txt" json
    timeout --foreground 300 taskset -c "$LOAD_CPUS" python3 "$BENCH/stream_client.py" -n "$STREAM_N" --model "$(model_of "$t" stream)" \
        "http://$(host_of "$t"):$(port_of "$t" 18101)/v1/chat/completions" >"$sout" 2>&1
    gw_alive "$t"
    json=$(sed -n 's/^BENCH_JSON //p' "$sout" | head -n 1)
    [[ -n $json ]] || { note "$t" "round $r: stream client failed (see logs/$(basename "$sout"))"; return; }
    echo "{\"kind\":\"stream\",\"target\":\"$t\",\"round\":$r,${json#\{}" >>"$RUNS"
    log "round $r stream $t: $(sed 's/.*"ttfb_p50": \([0-9.]*\).*/TTFB p50 \1 ms/' <<<"$json")"
}

max_c=0
for c in $CONNS; do ((c > max_c)) && max_c=$c; done
for t in $TARGETS; do   # warm-up, discarded
    ((WARMUP > 0)) && { log "warm-up $t (${WARMUP}s, c=$max_c)"; wrk_run "$t" "$max_c" "$WARMUP" /dev/null; gw_alive "$t"; }
done
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CONNS; do
        for t in $TARGETS; do measure "$t" "$c" "$r"; done
    done
    if ((STREAM_N > 0)); then
        for t in $TARGETS; do measure_stream "$t" "$r"; done
    fi
done

{
    echo "## gatewayd benchmark $STAMP"
    echo
    cat "$OUT/env.md"
    echo
    python3 "$BENCH/report.py" "$RUNS"
} >"$OUT/results.md"
cat "$OUT/results.md"
log "saved: ${OUT#"$REPO"/}/results.md (raw: runs.jsonl, logs/)"
