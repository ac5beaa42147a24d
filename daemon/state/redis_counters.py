"""Limit counters and budget spend shared through Redis: one Lua script per admission (one round
trip, atomic across every instance), one per settlement, sent without waiting.

    RedisCounters.book    check and book a request against rpm, tpm, concurrency and a budget,
                          all or nothing: `Booked` (the windows after it) or `Over` (which, and
                          when it has room)
    RedisCounters.settle  a reservation becomes what was used, a concurrency slot frees, a cost
                          joins the spend (in the background)

Keys, under the prefix, by the identity's digest (`identity_digest`):
    OWNER:req       sorted set: request ids by admission time (ms); the rolling rpm window
    OWNER:tok       sorted set: reservation ids by admission time; the tpm window
    OWNER:amt       hash: reservation id -> tokens, and TOTAL, the sum of those in the window
    OWNER:conc      sorted set: requests in flight by the time their claim lapses (a crashed
                    instance's requests stop counting then)
    OWNER:spend:P   the spend (INCRBYFLOAT) of the budget period starting at P
Windows expire their old ids on every booking, exactly as the local windows do (an id
leaves when its time is WINDOW old), and every key carries an expiry, so nothing grows without
bound: the windows' a little past their newest id, the spend's a day past its period.
"""

from __future__ import annotations

import itertools

import msgspec

from gatewayd.daemon.state.counters import WINDOW
from gatewayd.daemon.state.redis_link import RedisLink, identity_digest
from gatewayd.daemon.state.shared import Over

WINDOW_MS = int(WINDOW * 1000)
TOTAL = "#total"
SPEND_MARGIN = 86400.0  # seconds a period's spend is kept past the period's end
NONE = -1  # a limit that does not apply

# KEYS: req, tok, amt, conc, spend
# ARGV: now_ms, window_ms, rpm, tpm, concurrency, tokens, budget, id, conc_lapse_ms
# -> {0, requests, oldest request ms, tokens, oldest reservation ms} or {1, spent} (budget),
#    {2, wait ms} (rpm), {3, wait ms} (tpm), {4} (concurrency)
BOOK = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, conc = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, budget, id = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local horizon = now - window
if budget >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[5]) or '0')
  if spent >= budget then return {1, tostring(spent)} end
end
local requests = 0
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
  requests = redis.call('ZCARD', KEYS[1])
  if requests + 1 > rpm then
    if rpm < 1 then return {2, window} end
    local leaving = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
    return {2, tonumber(leaving[2]) + window - now}
  end
end
local total = 0
if tpm >= 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)
  if #gone > 0 then
    local freed = 0
    for _, old in ipairs(gone) do
      freed = freed + tonumber(redis.call('HGET', KEYS[3], old) or '0')
      redis.call('HDEL', KEYS[3], old)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
    redis.call('HINCRBY', KEYS[3], '#total', -freed)
  end
  total = tonumber(redis.call('HGET', KEYS[3], '#total') or '0')
  local excess = total + tokens - tpm
  if excess > 0 then
    if tokens > tpm then return {3, window} end
    local held = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
    for i = 1, #held, 2 do
      excess = excess - tonumber(redis.call('HGET', KEYS[3], held[i]) or '0')
      if excess <= 0 then return {3, tonumber(held[i + 1]) + window - now} end
    end
    return {3, window}
  end
end
if conc >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= conc then return {4} end
  local lapse = tonumber(ARGV[9])
  redis.call('ZADD', KEYS[4], lapse, id)
  if redis.call('PTTL', KEYS[4]) < lapse - now then redis.call('PEXPIRE', KEYS[4], math.ceil(lapse - now)) end
end
local oldest_request, oldest_tokens = now, now
if rpm >= 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], window + 1000)
  requests = requests + 1
  oldest_request = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
end
if tpm >= 0 then
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('HSET', KEYS[3], id, tokens)
  redis.call('HINCRBY', KEYS[3], '#total', tokens)
  redis.call('PEXPIRE', KEYS[2], window + 1000)
  redis.call('PEXPIRE', KEYS[3], window + 1000)
  total = total + tokens
  oldest_tokens = tonumber(redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2])
end
return {0, requests, tostring(oldest_request), total, tostring(oldest_tokens)}
"""

# KEYS: amt, conc, spend   ARGV: id, used tokens (-1: keep the reservation), release (0|1), cost, spend expiry ms
SETTLE = """
local used = tonumber(ARGV[2])
if used >= 0 then
  local held = redis.call('HGET', KEYS[1], ARGV[1])
  if held then
    redis.call('HSET', KEYS[1], ARGV[1], used)
    redis.call('HINCRBY', KEYS[1], '#total', used - tonumber(held))
  end
end
if ARGV[3] == '1' then redis.call('ZREM', KEYS[2], ARGV[1]) end
if tonumber(ARGV[4]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[3], ARGV[4])
  redis.call('PEXPIREAT', KEYS[3], ARGV[5])
end
return 0
"""


class Booked(msgspec.Struct, gc=False):
    """An admission booked: its id (what it settles by) and the windows after it."""

    id: str
    requests: int
    oldest_request: float  # wall-clock seconds
    tokens: int
    oldest_tokens: float


OVER = {2: "rpm", 3: "tpm", 4: "concurrency"}


class RedisCounters:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._book = link.script(BOOK)
        self._settle = link.script(SETTLE)
        self._ids = itertools.count()

    def keys(self, identity: tuple) -> list[str]:
        owner = identity_digest(identity)
        link = self.link
        return [link.key(owner, "req"), link.key(owner, "tok"), link.key(owner, "amt"), link.key(owner, "conc")]

    def spend_key(self, identity: tuple, period_start: float) -> str:
        return self.link.key(identity_digest(identity), "spend", str(int(period_start)))

    async def book(self, identity: tuple, now: float, tokens: int, rpm: int | None = None, tpm: int | None = None,
                   concurrency: int | None = None, hold: float = 0.0, budget: float | None = None,
                   period_start: float = 0.0) -> Booked | Over:
        """Check and book, atomically for every instance. `hold`: the seconds after which a
        concurrency claim lapses by itself. Raises Unavailable."""
        request_id = f"{self.link.instance}:{next(self._ids)}"
        now_ms = now * 1000
        keys = [*self.keys(identity), self.spend_key(identity, period_start)]
        args = [repr(now_ms), WINDOW_MS, NONE if rpm is None else rpm, NONE if tpm is None else tpm,
                NONE if concurrency is None else concurrency, tokens, NONE if budget is None else repr(budget),
                request_id, repr(now_ms + hold * 1000)]
        answer = await self.link.run(lambda client: self._book(keys=keys, args=args, client=client))
        code = int(answer[0])
        if code == 0:
            return Booked(request_id, int(answer[1]), float(answer[2]) / 1000, int(answer[3]), float(answer[4]) / 1000)
        if code == 1:
            return Over("budget", spent=float(answer[1]))
        return Over(OVER[code], max(float(answer[1]) / 1000, 0.001) if len(answer) > 1 else 1.0)

    def settle(self, identity: tuple, request_id: str, used: int | None, release: bool, cost: float | None = None,
               period_start: float = 0.0, period_end: float = 0.0) -> None:
        """In the background: the reservation becomes `used` (None keeps it), the slot frees with
        `release`, `cost` joins the period's spend."""
        owner = identity_digest(identity)
        link = self.link
        keys = [link.key(owner, "amt"), link.key(owner, "conc"), self.spend_key(identity, period_start)]
        args = [request_id, NONE if used is None else max(used, 0), 1 if release else 0, repr(cost or 0.0),
                int((period_end + SPEND_MARGIN) * 1000)]
        link.spawn(lambda client: self._settle(keys=keys, args=args, client=client))
