"""``online_status``: what the online loop did to a base path (versions, blessings, canary)."""

from __future__ import annotations

import json
import os
from typing import Any

from tfprod.online.gate import read_gate


def list_versions(base: str) -> list[int]:
    """Numbered version folders (``tfprod.export.list_versions``, without importing
    TensorFlow through ``tfprod.export``)."""
    if not os.path.isdir(base):
        return []
    return sorted(int(e.name) for e in os.scandir(base)
                  if e.name.isascii() and e.name.isdigit() and e.is_dir())


def online_status(base_path: str | os.PathLike, state_dir: str | os.PathLike | None = None,
                  *, log_url: str | None = None, model: str | None = None,
                  since: float | None = None) -> dict[str, Any]:
    """Versions with their gate decisions, the labels, the canary and the last events; with
    ``log_url`` (and the served ``model`` name) also each version's accuracy on its labelled
    requests since ``since`` (an A/B split's per-version figures)."""
    base = os.path.abspath(os.fspath(base_path))
    state_dir = os.fspath(state_dir or f"{base}.online")
    state: dict[str, Any] = {}
    pointer = os.path.join(state_dir, "CURRENT")
    if os.path.exists(pointer):
        with open(pointer, encoding="utf-8") as f:
            current = f.read().strip()
        with open(os.path.join(state_dir, current, "state.json"), encoding="utf-8") as f:
            state = json.load(f)
    events: list[dict[str, Any]] = []
    path = os.path.join(state_dir, "events.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            events = [json.loads(line) for line in f if line.strip()]
    fate: dict[int, str] = {}
    for e in events:
        if e["event"] == "canary":
            fate[e["version"]] = "canary"
        elif e["event"] in ("promote", "rollback") and "canary" in e:
            fate[e["canary"]] = "promoted" if e["event"] == "promote" else "rolled back"
    versions = []
    for v in list_versions(base):
        gate = read_gate(os.path.join(base, str(v)))
        label = "stable" if v == state.get("stable") else (
            "canary" if v == state.get("canary") else "")
        versions.append({"version": v, "label": label, "fate": fate.get(v, ""),
                         "blessed": None if gate is None else gate["blessed"],
                         "holdout": None if gate is None else gate["candidate"],
                         "baseline": None if gate is None else gate["baseline"],
                         "baseline_version": None if gate is None else gate["baseline_version"]})
    rejected = sorted(int(d) for d in os.listdir(os.path.join(state_dir, "rejected"))
                      if d.isdigit()) if os.path.isdir(os.path.join(state_dir, "rejected")) \
        else []
    served: dict[int, tuple[int, int]] = {}
    if log_url is not None:
        from tfprod.monitor.store import open_store
        from tfprod.online.rollout import version_accuracy

        store = open_store(log_url, create=False)
        try:
            served = version_accuracy(store, model or os.path.basename(base), since=since)
        finally:
            store.close()
    for row in versions:
        right, n = served.get(row["version"], (0, 0))
        row["labelled"], row["accuracy"] = n, (right / n if n else None)
    return {"base_path": base, "state_dir": state_dir, "round": state.get("round", 0),
            "stable": state.get("stable"), "canary": state.get("canary"),
            "strategy": state.get("strategy"), "versions": versions,
            "rejected_rounds": rejected, "events": events[-10:]}
