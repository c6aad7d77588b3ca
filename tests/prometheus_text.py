"""Reading the Prometheus text exposition back, to assert exact counts."""

import re

_SAMPLE = re.compile(r'^([^\s{#]+)(?:\{(.*)\})?\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, frozenset of (label, value))): value} of every sample line."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            name, labels, value = m.groups()
            out[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return out


def delta(before: dict, after: dict, name: str, **labels) -> float:
    """How far one sample moved between two reads (absent counts as 0)."""
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)
