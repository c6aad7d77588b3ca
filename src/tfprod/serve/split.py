"""Traffic splits: which version an unversioned request goes to while a rollout runs.

Two splits exist, one per model at most:

- the canary (``--canary_percent=P``): while a model has both a ``stable`` and a ``canary``
  version label, P% of unversioned requests go to the canary;
- an A/B split (``--ab_weights=a=50,b=50``): unversioned requests are shared between version
  labels of models.config by fixed weights. TF Serving's ``ModelConfig`` has no field for a
  weight, so the weights are a tfprod flag and the labels stay TF Serving's own
  (``version_labels { key: "a" value: 1 }``). ``--ab_weights=digits:a=50,b=50;ranker:x=1,y=3``
  gives each model its own split; without a ``MODEL:`` prefix the split applies to every model
  that declares all of its labels.

A request with a routing key (the client's ``X-Request-Id``) always lands on the same side: the
key's crc32 falls into one of 10,000 buckets and each arm owns a contiguous range of them
(:func:`canary_share` for the canary). Without a key the side is drawn at random. Requests that
name a version or a label are never split.

A model is either in a canary or in an A/B split, not both: a model with A/B weights that also
has ``stable`` and ``canary`` labels while ``--canary_percent`` is above 0 is refused, at start
(exit status 2) and on a models.config reload (the previous config keeps serving).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tfprod.serve.config import ConfigError, ModelSpec

__all__ = ["ABWeights", "WeightedSplit", "ab_weights_for", "bucket", "canary_share",
           "check_ab_weights", "format_ab_weights", "parse_ab_weights"]

BUCKETS = 10_000
STABLE, CANARY, SHADOW = "stable", "canary", "shadow"
_EXAMPLE = "e.g. --ab_weights=a=50,b=50 or --ab_weights=digits:a=90,b=10"
_LABEL = re.compile(r"[A-Za-z0-9_.\-]+")

# model name (None: every model that declares all the labels) -> ((label, weight), ...)
ABWeights = dict[str | None, tuple[tuple[str, float], ...]]


def bucket(key: str) -> int:
    """The bucket (0..9,999) of a routing key: the same key always gets the same bucket."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % BUCKETS


def canary_share(key: str, percent: float) -> bool:
    """Whether the request keyed ``key`` goes to the canary: the same key always lands on the
    same side (crc32 of the key into 10,000 buckets)."""
    return bucket(key) < percent * 100


def parse_ab_weights(text: str | None) -> ABWeights:
    """``--ab_weights`` as ``{model or None: ((label, weight), ...)}``; {} for ""/None.

    Raises:
        ConfigError: an entry that is not ``LABEL=WEIGHT``, a weight that is not a number, is
            negative or infinite, a label given twice, fewer than two labels, weights summing
            to 0, a model given twice.
    """
    out: ABWeights = {}
    for part in (text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        model: str | None = None
        head, colon, rest = part.partition(":")
        if colon:
            model, part = head.strip(), rest
            if not _LABEL.fullmatch(model):
                raise ConfigError(f"--ab_weights: model name {model!r} is not valid; "
                                  f"{_EXAMPLE}")
        if model in out:
            which = f"model {model!r}" if model else "the split of every model"
            raise ConfigError(f"--ab_weights gives {which} twice; {_EXAMPLE}")
        arms: list[tuple[str, float]] = []
        for item in part.split(","):
            label, eq, value = item.strip().partition("=")
            label = label.strip()
            if not eq or not _LABEL.fullmatch(label):
                raise ConfigError(f"--ab_weights: {item.strip()!r} is not LABEL=WEIGHT; "
                                  f"{_EXAMPLE}")
            try:
                weight = float(value)
            except ValueError:
                raise ConfigError(f"--ab_weights: weight {value.strip()!r} of label {label!r} "
                                  f"is not a number; {_EXAMPLE}") from None
            if not 0.0 <= weight < float("inf"):
                raise ConfigError(f"--ab_weights: weight {value.strip()} of label {label!r}; "
                                  "expected a number >= 0")
            if label in (a for a, _ in arms):
                raise ConfigError(f"--ab_weights: label {label!r} is given twice")
            arms.append((label, weight))
        if len(arms) < 2:
            raise ConfigError(f"--ab_weights: {part.strip()!r} names {len(arms)} label; an A/B "
                              f"split needs two or more; {_EXAMPLE}")
        if sum(w for _, w in arms) <= 0:
            raise ConfigError(f"--ab_weights: the weights of {part.strip()!r} sum to 0; give at "
                              "least one label a positive weight")
        out[model] = tuple(arms)
    return out


def ab_weights_for(weights: ABWeights, spec: ModelSpec) -> tuple[tuple[str, float], ...] | None:
    """The split of one model: its own entry, else the unprefixed one if the model declares all
    of its labels, else None."""
    if spec.name in weights:
        return weights[spec.name]
    arms = weights.get(None)
    if arms is not None and all(label in spec.labels for label, _ in arms):
        return arms
    return None


def check_ab_weights(weights: ABWeights, specs: Iterable[ModelSpec],
                     canary_percent: float) -> None:
    """Refuse a split that cannot apply to ``specs`` (the models.config being served).

    Raises:
        ConfigError: a model in the flag that is not served, a label a model does not declare,
            two labels of one split naming one version, the ``shadow`` label as an arm, an
            unprefixed split that no model declares, a model with both a split and a canary.
    """
    if not weights:
        return
    specs = list(specs)
    by_name = {s.name: s for s in specs}
    for model in weights:
        if model is not None and model not in by_name:
            raise ConfigError(f"--ab_weights names model {model!r}, which is not served; "
                              f"served: {', '.join(sorted(by_name)) or 'none'}")
    if None in weights and not any(ab_weights_for({None: weights[None]}, s) for s in specs):
        labels = ", ".join(label for label, _ in weights[None])
        raise ConfigError(f"--ab_weights: no served model declares the version labels {labels}; "
                          "declare them in models.config, e.g. version_labels { key: "
                          f"\"{weights[None][0][0]}\" value: 1 }}")
    for spec in specs:
        arms = ab_weights_for(weights, spec)
        if arms is None:
            continue
        for label, _ in arms:
            if label not in spec.labels:
                raise ConfigError(f"--ab_weights: model {spec.name!r} has no version label "
                                  f"{label!r} (it has: {', '.join(sorted(spec.labels)) or 'none'})"
                                  f"; declare it in models.config: version_labels {{ key: "
                                  f"\"{label}\" value: VERSION }}")
            if label == SHADOW:
                raise ConfigError(f"--ab_weights: label 'shadow' of model {spec.name!r} gets a "
                                  "copy of traffic and answers nobody; it cannot be an A/B arm")
        versions = [spec.labels[label] for label, _ in arms]
        if len(set(versions)) != len(versions):
            raise ConfigError(f"--ab_weights: labels {', '.join(a for a, _ in arms)} of model "
                              f"{spec.name!r} name versions {versions}; each arm needs its own "
                              "version")
        if canary_percent > 0 and STABLE in spec.labels and CANARY in spec.labels:
            raise ConfigError(f"model {spec.name!r} has an A/B split (--ab_weights) and a canary "
                              f"(labels stable and canary with --canary_percent="
                              f"{canary_percent:g}); run one rollout per model")


def format_ab_weights(arms: Sequence[tuple[str, float]], labels: dict[str, int]) -> str:
    """``a -> version 1 50%, b -> version 2 50%`` (for the server's log)."""
    total = sum(w for _, w in arms)
    return ", ".join(f"{label} -> version {labels.get(label, '?')} {100 * w / total:g}%"
                     for label, w in arms)


@dataclass(frozen=True)
class WeightedSplit:
    """N arms by fixed weights: ``choose`` returns ``(arm, servable)``.

    Arms whose version is not AVAILABLE are left out when the split is built, so their share
    goes to the others in proportion to their weights until the version is back.
    """

    arms: tuple[tuple[str, Any], ...]  # (label, servable)
    bounds: tuple[float, ...]          # cumulative upper bucket of each arm

    @classmethod
    def build(cls, weighted: Sequence[tuple[str, float, Any]]) -> WeightedSplit | None:
        """From ``(label, weight, servable or None)``; None when fewer than one arm with a
        positive weight is available."""
        live = [(label, w, s) for label, w, s in weighted if s is not None and w > 0]
        if not live:
            return None
        total = sum(w for _, w, _ in live)
        bounds, running = [], 0.0
        for _, w, _ in live:
            running += w
            bounds.append(running * BUCKETS / total)
        bounds[-1] = float(BUCKETS)
        return cls(tuple((label, s) for label, _, s in live), tuple(bounds))

    def choose(self, key: str | None, rng: random.Random) -> tuple[str, Any]:
        """The arm of a request: by ``key``'s bucket (sticky) or at random."""
        point = bucket(key) if key is not None else rng.random() * BUCKETS
        for arm, bound in zip(self.arms, self.bounds, strict=True):
            if point < bound:
                return arm
        return self.arms[-1]
