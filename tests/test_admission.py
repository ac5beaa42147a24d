"""The one admission check (daemon/routing/admission.py) and the read-only views built on it:
explain's reasons and /admin/status's states (daemon/routing/explain.py, status.py).
Every instant is explicit: `now` in wall-clock seconds, `at` for windows."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from gatewayd.daemon.core.failures import FailureClass
from gatewayd.daemon.core.windows import Windows
from gatewayd.daemon.routing.admission import (
    CAPABILITY,
    COOLDOWN,
    DISABLED,
    HALF_OPEN,
    OUTSIDE_WINDOW,
    PROBE,
    USABLE,
    iso,
    judge,
)
from gatewayd.daemon.routing.explain import out_reason
from gatewayd.daemon.routing.status import deployment_states, deployments_status, usable_count
from gatewayd.daemon.state.health import LocalHealthStore
from tests.test_health import COOL, INITIAL, N, make_deployment, rate_limited, server_error

TUESDAY_NOON = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
NOW = TUESDAY_NOON.timestamp()
EVERYTHING = frozenset({"chat", "stream", "embeddings"})


def disabled(deployment, why="its api_key resolved to an empty value"):
    return dataclasses.replace(deployment, provider=dataclasses.replace(deployment.provider, disabled=why))


def nights_only(deployment):
    return dataclasses.replace(deployment, windows=Windows.build(["mon-fri 20:00-07:00"], (), "UTC"))


def cooled(store, deployment, now=NOW, error=None):
    health = store.get(deployment)
    for _ in range(N):
        health.fail(error or server_error(), COOL, now)
    return health


def snapshot_of(**deployments):
    return SimpleNamespace(graph=SimpleNamespace(deployments=deployments))


# ---------------------------------------------------------------- usable


def test_a_deployment_nothing_happened_to_is_usable_without_allocating():
    d = make_deployment()
    assert judge(d, None, NOW) is USABLE
    assert judge(d, LocalHealthStore().get(d), NOW, "chat", EVERYTHING, claim=True) is USABLE
    assert USABLE.usable and not USABLE.probe and USABLE.out is None and USABLE.state == "ok"


# ---------------------------------------------------------------- out, and in which order


def test_capability_comes_first_and_only_when_an_operation_is_given():
    d = disabled(make_deployment(type_="anthropic"))
    verdict = judge(d, None, NOW, "embeddings", frozenset({"chat", "stream"}))
    assert (verdict.usable, verdict.out) == (False, CAPABILITY)
    assert verdict.reason == "provider type anthropic cannot serve embeddings"
    assert judge(d, None, NOW).out == DISABLED  # status and explain give no operation


def test_disabled_beats_windows_and_health():
    store = LocalHealthStore()
    d = nights_only(disabled(make_deployment()))
    cooled(store, d)
    verdict = judge(d, store.get(d), NOW, "chat", EVERYTHING, claim=True)
    assert (verdict.out, verdict.state) == (DISABLED, "disabled")
    assert verdict.reason == "disabled (its api_key resolved to an empty value)"
    assert not verdict.rate_limited and verdict.cooldown_until == 0.0


def test_outside_window_is_read_at_now_unless_an_instant_is_given():
    d = nights_only(make_deployment())
    verdict = judge(d, None, NOW)
    assert (verdict.out, verdict.state) == (OUTSIDE_WINDOW, "outside_window")
    assert verdict.reason.startswith("outside window (only: mon-fri 20:00-07:00; now Tue 12:00 UTC")
    assert judge(d, None, NOW, at=TUESDAY_NOON.replace(hour=21)) is USABLE
    assert judge(d, None, TUESDAY_NOON.replace(hour=21).timestamp()) is USABLE


def test_cooldown_says_until_when_and_after_what():
    store = LocalHealthStore()
    d = make_deployment()
    cooled(store, d)
    verdict = judge(d, store.get(d), NOW + 1, "chat", EVERYTHING, claim=True)
    assert (verdict.usable, verdict.out, verdict.state) == (False, COOLDOWN, "cooldown")
    assert verdict.cooldown_until == pytest.approx(NOW + INITIAL)
    assert verdict.reason == f"cooling down until {iso(NOW + INITIAL)} after server 500: boom"
    assert not verdict.rate_limited


def test_cooldown_after_a_429_is_rate_limited():
    store = LocalHealthStore()
    d = make_deployment()
    cooled(store, d, error=rate_limited(120.0))
    verdict = judge(d, store.get(d), NOW + 1)
    assert verdict.out == COOLDOWN and verdict.rate_limited
    assert verdict.cooldown_until == pytest.approx(NOW + 120.0)  # Retry-After extended it


# ---------------------------------------------------------------- the half-open probe


def test_only_a_claim_takes_the_probe():
    store = LocalHealthStore()
    d = make_deployment()
    health = cooled(store, d)
    after = NOW + INITIAL
    for _ in range(3):  # asking (status, explain) changes nothing
        assert judge(d, health, after) is PROBE
    assert PROBE.state == HALF_OPEN
    assert judge(d, health, after, "chat", EVERYTHING, claim=True) is PROBE  # the router takes it
    verdict = judge(d, health, after, "chat", EVERYTHING, claim=True)
    assert (verdict.usable, verdict.out, verdict.state) == (False, HALF_OPEN, "half_open")
    assert verdict.reason == "half-open: a probe request is in flight"
    assert verdict.cooldown_until == 0.0  # no end to wait for: the probe decides
    assert judge(d, health, after).out == HALF_OPEN


def test_explain_and_status_never_claim_the_probe():
    store = LocalHealthStore()
    d = make_deployment()
    health = cooled(store, d, now=NOW - INITIAL - 1)  # its cooldown has just ended
    snapshot = snapshot_of(d=d)
    for _ in range(2):
        assert out_reason(d, TUESDAY_NOON, store) is None
        assert deployments_status(snapshot, store, NOW)["d"]["state"] == "half_open"
        assert dict(deployment_states(snapshot, store, NOW)) == {"d": "half_open"}
        assert usable_count(snapshot, store, NOW) == 1
    assert not health.view().probing
    assert judge(d, health, NOW, "chat", EVERYTHING, claim=True) is PROBE


# ---------------------------------------------------------------- explain and status read the same verdict


def test_explain_names_the_provider_of_a_disabled_deployment():
    d = disabled(make_deployment("d", type_="openai"))
    assert out_reason(d, TUESDAY_NOON) == "provider 'p' disabled: its api_key resolved to an empty value"


def test_explain_gives_the_routers_reasons_otherwise():
    store = LocalHealthStore()
    cooling, night = make_deployment("c"), nights_only(make_deployment("n", model="night"))
    cooled(store, cooling, now=NOW)
    assert out_reason(cooling, TUESDAY_NOON, store, now=NOW + 1) == judge(cooling, store.get(cooling), NOW + 1).reason
    assert out_reason(night, TUESDAY_NOON, store) == judge(night, None, NOW).reason
    assert out_reason(night, TUESDAY_NOON.replace(hour=22), store) is None  # windows at the instant asked


def test_status_states_and_readiness():
    store = LocalHealthStore()
    ok, off, night = make_deployment("ok"), disabled(make_deployment("off", model="m2")), \
        nights_only(make_deployment("night", model="m3"))
    cooling, probing = make_deployment("cool", model="m4"), make_deployment("probe", model="m5")
    cooled(store, cooling, now=NOW)
    cooled(store, probing, now=NOW - INITIAL - 1)
    store.get(probing).admit(NOW)  # a request is its probe
    snapshot = snapshot_of(ok=ok, off=off, night=night, cool=cooling, probe=probing)
    states = dict(deployment_states(snapshot, store, NOW))
    assert states == {"ok": "ok", "off": "disabled", "night": "outside_window", "cool": "cooldown",
                      "probe": "half_open"}
    status = deployments_status(snapshot, store, NOW)
    assert {name: entry["state"] for name, entry in status.items()} == states
    assert status["cool"]["cooldown_until"] == iso(NOW + INITIAL) and status["cool"]["failures"] == 0
    assert status["cool"]["last_error"] == "server 500: boom"
    assert status["probe"]["cooldown_until"] is None  # its cooldown has passed
    assert status["ok"] == {"state": "ok", "cooldown_until": None, "failures": 0, "last_error": None}
    assert usable_count(snapshot, store, NOW) == 2  # ok, and half_open even with its probe in flight
    assert usable_count(snapshot_of(off=off, cool=cooling), store, NOW) == 0


def test_a_failure_class_that_is_not_a_429_is_not_rate_limited():
    store = LocalHealthStore()
    d = make_deployment()
    cooled(store, d)
    assert store.get(d).view().last_failure is FailureClass.SERVER
    assert judge(d, store.get(d), NOW).rate_limited is False
