"""The Prometheus text format (version 0.0.4) of a prometheus_client registry, written fast.

prometheus_client's own writers check and escape the name of every label of every sample, which
alone would miss the metrics program's scrape budget for a 50-actor site (figures in
docs/hot-paths.md). This writer checks each family's
metric and label names once per family, escapes label values only when they hold a character
that needs it, and otherwise writes what ``prometheus_client.exposition.generate_latest``
writes: the same families in the same order, the same HELP and TYPE lines (counters named with
``_total``), ``_created`` samples as their own gauge families. The unit tests compare the two
writers' output through prometheus_client's parser.

Every Prometheus server accepts this format (it asks for OpenMetrics first, then for this), so
/metrics answers with it whatever the ``Accept`` header says.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from prometheus_client.metrics_core import Metric

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES: Final = {"counter": "counter", "gauge": "gauge", "histogram": "histogram",
                 "summary": "summary", "info": "gauge", "stateset": "gauge",
                 "gaugehistogram": "histogram", "unknown": "untyped"}
_SEPARATE: Final = ("_created", "_gsum", "_gcount")  # OpenMetrics samples, own families here


class ExpositionError(ValueError):
    """A family or label name the text format cannot carry."""


def _value(v: float) -> str:
    """A sample value as prometheus_client writes it (Go's strconv formatting)."""
    s = repr(float(v))
    dot = s.find(".")
    if dot < 0:  # inf, nan, or an exponent
        return {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}.get(s, s)
    if v > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _check(name: str, pattern: re.Pattern[str]) -> str:
    if not pattern.fullmatch(name):
        raise ExpositionError(f"{name!r} is not a valid metric or label name")
    return name


def write(families: Iterable[Metric]) -> bytes:
    """The text format of `families` (``registry.collect()``)."""
    out: list[str] = []
    append = out.append
    escape, value_of = _escape, _value
    single: dict[tuple[str, str], str] = {}  # label text of one-label samples, made once
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else
                              "_info" if family.type == "info" else "")
        _check(name, _NAME)
        doc = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(family.type, 'untyped')}\n")
        checked: set[object] = set()  # label names and sample names found valid
        separate: dict[str, list[str]] = {}
        for sample in family.samples:
            labels = sample.labels
            if len(labels) == 1:  # most samples: one label, the same in many families
                ((key, label),) = labels.items()
                text = single.get((key, label), "")
                if not text:
                    if key not in checked:
                        checked.add(_check(key, _LABEL))
                    text = single[(key, label)] = f'{{{key}="{escape(label)}"}}'
            elif len(labels) == 2:  # histogram buckets: actor and le
                (k1, v1), (k2, v2) = labels.items()
                if k2 < k1:
                    k1, v1, k2, v2 = k2, v2, k1, v1
                if (k1, k2) not in checked:
                    checked.add((_check(k1, _LABEL), _check(k2, _LABEL)))
                text = f'{{{k1}="{escape(v1)}",{k2}="{escape(v2)}"}}'
            elif labels:
                keys = sorted(labels)
                for key in keys:
                    if key not in checked:
                        checked.add(_check(key, _LABEL))
                text = "{" + ",".join([f'{k}="{escape(labels[k])}"' for k in keys]) + "}"
            else:
                text = ""
            sample_name = sample.name
            line = f"{sample_name}{text} {value_of(sample.value)}"
            line += "\n" if sample.timestamp is None else \
                f" {int(float(sample.timestamp) * 1000):d}\n"
            if sample_name not in checked:
                suffix = sample_name[len(family.name):]
                if sample_name.startswith(family.name) and suffix in _SEPARATE:
                    separate.setdefault(suffix, []).append(line)
                    continue
                checked.add(_check(sample_name, _NAME))
            append(line)
        for suffix, lines in sorted(separate.items()):
            append(f"# HELP {family.name}{suffix} {doc}\n"
                   f"# TYPE {family.name}{suffix} gauge\n")
            out += lines
    return "".join(out).encode("utf-8")
