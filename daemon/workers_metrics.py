"""One /metrics scrape for several workers: their expositions merged into one.

Each worker renders its own registry (daemon/observe/metrics.py, custom collectors included) and
the supervisor adds its own (reloads, worker restarts). prometheus-client's parser reads each
text back into metric families, and they are merged by family and label set:

- counters and histograms (`_total`, `_bucket`, `_count`, `_sum`) are summed over the workers,
  so `rate()` over the merged series is the whole daemon's rate;
- a counter's or histogram's `_created` is the earliest of the workers' (the series began then);
- every other gauge keeps one series per worker with a `worker` label (its index): in-flight
  requests, deployment states, queue lengths, cache fill, the serving config version, process_*
  figures are each a worker's own, and a sum would hide which worker holds what
  (`sum without (worker) (...)` adds them up where that is meant);
- the supervisor's own families carry no `worker` label.

prometheus-client then writes the merged families as it writes any registry's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

SUMMED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
WORKER_LABEL = "worker"


class Merged:
    """The merged families, in the order they first appeared; a collector for `generate_latest`."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}
        self._values: dict[str, dict[tuple, float]] = {}  # family -> (sample name, labels) -> value

    def add(self, text: str, worker: str | None) -> None:
        """One process's exposition; `worker` is its index, None for the supervisor."""
        for family in text_string_to_metric_families(text):
            if family.name not in self._families:
                self._families[family.name] = Metric(family.name, family.documentation, family.type)
                self._values[family.name] = {}
            values = self._values[family.name]
            summed = family.type in SUMMED
            earliest = family.type == "gauge" and family.name.endswith("_created")
            for sample in family.samples:
                labels = dict(sample.labels)
                if not summed and not earliest and worker is not None:
                    labels[WORKER_LABEL] = worker
                key = (sample.name, tuple(labels.items()))
                if key not in values:
                    values[key] = sample.value
                elif summed:
                    values[key] += sample.value
                elif earliest:
                    values[key] = min(values[key], sample.value)
                else:  # one worker's gauge named twice: the last word stands
                    values[key] = sample.value

    def collect(self) -> Iterator[Metric]:
        for name, family in self._families.items():
            family.samples = []
            for (sample_name, labels), value in self._values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


def merge(expositions: Iterable[tuple[str | None, str]]) -> bytes:
    """(worker index or None for the supervisor, its exposition text) pairs as one exposition."""
    merged = Merged()
    for worker, text in expositions:
        merged.add(text, worker)
    return generate_latest(merged)  # any object with collect() will do
