"""``OnlineLoop``: one process that closes the loop on a running ``tfprod serve``.

Each :meth:`OnlineLoop.step` does one of two things:

- **no canary out**: read the labelled examples that arrived (the stream's cursor), and once
  there are ``min_examples``, learn them prequentially (score, then learn, chunk by chunk; a
  drift alarm makes the following chunks' updates larger, then the round's examples are
  learned once more and consolidated), keeping every ``recent_every``-th example
  out of training as the recent window; then the gate (:mod:`.gate`) against the serving
  version. Blessed: published as a new version (``assets.extra/tfprod/gate.json`` and
  ``model.keras`` inside, before the atomic rename) and labelled ``canary`` in models.config.
  Refused: kept in ``STATE/rejected/<round>/`` with its decision; nothing is published and the
  learner goes back to the stable state.
- **a canary out**: compare canary and stable on the labelled requests each served since the
  canary went out (:func:`~tfprod.online.rollout.verdict`); promote (the ``stable`` label moves)
  or roll back, or wait for more labels.

State lives in ``STATE`` (default ``BASE.online``): every step ends with one atomic commit
(a new ``commit-N`` folder, then ``CURRENT`` replaced), so a loop killed at any point restarts
from the last commit and redoes the interrupted step exactly (same examples, same seeds). The
learner state that belongs to the stable version is kept apart from the canary's, so a
rollback restores it. Every step is a line in ``STATE/events.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfprod.errors import TfprodError
from tfprod.export import export_saved_model, list_versions
from tfprod.export.publish import TEMP_PREFIX, _pid_alive
from tfprod.export.signature import output_names
from tfprod.online.gate import GATE_FILE, check_holdout, evaluate_gate
from tfprod.online.learner import Learner
from tfprod.online.prequential import Prequential
from tfprod.online.rollout import verdict, version_accuracy, write_models_config
from tfprod.online.strategies import make_learner
from tfprod.online.stream import Examples, LogStream

MODEL_FILE = "assets.extra/tfprod/model.keras"
Log = Callable[[str], None]


def load_holdout(path: str | os.PathLike, *, label: str = "label") -> Examples:
    """A labelled holdout: a ``.npz`` (input arrays + ``labels``, or an exported reference
    sample), a CSV with a ``label`` column, or an exported version folder (its reference
    sample, which keeps the labels)."""
    from tfprod.monitor.datasets import load_dataset

    path = os.fspath(path)
    data = load_dataset(path, label=None if path.endswith(".npz") or os.path.isdir(path)
                        else label)
    labels = data.labels
    for key in ("labels", label):
        if labels is None and key in data.features:
            labels = data.features.pop(key)
    if labels is None:
        raise TfprodError(f"holdout {path} has no labels; a .npz needs a 'labels' array, a CSV "
                          f"a {label!r} column")
    y = np.asarray(labels)
    return Examples(dict(data.features), y.astype(np.int64) if y.dtype.kind == "f" and
                    np.all(y == np.round(y)) else y)


def check_base_free(base: str) -> None:
    """A clear error when another process is exporting into ``base`` right now."""
    if not os.path.isdir(base):
        raise TfprodError(f"{base}: no such base path; export the serving model there first "
                          "(tfprod export MODEL BASE)")
    for name in os.listdir(base):
        if name.startswith(TEMP_PREFIX):
            parts = name[len(TEMP_PREFIX):].rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and _pid_alive(int(parts[1])):
                raise TfprodError(f"{base} is being written by process {parts[1]} ({name}); "
                                  "wait for that export to finish, then run again; nothing "
                                  "was published")


class OnlineLoop:
    """Feedback -> update -> gate -> canary -> promote, for one served model.

    Args:
        base_path: the served model's base path (``BASE/<version>/``).
        holdout: the fixed labelled holdout (:func:`load_holdout`, or :class:`Examples`).
        model_config_file: the models.config the server re-reads (the loop writes it).
        log_url: the request log (with feedback); the stream, and the canary's verdict.
        model_name: the served model's name (in models.config and the log).
        stream: another source (:mod:`.stream`) instead of the log; the canary is then
            promoted on the gate alone.
        state_dir: where the loop's state lives (default ``BASE.online``).
        strategy: finetune, replay, ewc or lwf; ``learner_args`` go to its constructor.
        keras_model: the ``.keras`` file of the serving version when the version folder has
            none (versions the loop publishes carry their own).
        min_examples: labelled examples needed for a round.
        max_examples: at most this many per round (None: all that arrived).
        margin, floor: the gate's thresholds.
        canary_min_requests, alpha, canary_window_s: the canary's verdict (see
            :func:`~tfprod.online.rollout.verdict`).
        rollout: "canary" (the candidate takes ``tfprod serve --canary_percent`` of the
            traffic) or "shadow" (it gets a copy of every unversioned request; its answers are
            only logged, and judged against stable's on the very same labelled requests).
        recent_every: every N-th new example is kept out of training for the gate's recent
            window (0: none).
        seed: seeds the learner.
        log: where one-line events go.
    """

    def __init__(self, base_path: str | os.PathLike, holdout: Examples | str | os.PathLike, *,
                 model_config_file: str | os.PathLike, log_url: str | None = None,
                 model_name: str = "default", stream: Any = None,
                 state_dir: str | os.PathLike | None = None, strategy: str = "replay",
                 learner_args: dict[str, Any] | None = None,
                 keras_model: str | os.PathLike | None = None, min_examples: int = 100,
                 max_examples: int | None = None,
                 margin: float = 0.01, floor: float = 0.0, canary_min_requests: int = 100,
                 alpha: float = 0.05, canary_window_s: float | None = None,
                 rollout: str = "canary", recent_every: int = 5, chunk: int = 32,
                 seed: int = 0,
                 log: Log | None = None):
        self.base = os.path.abspath(os.fspath(base_path))
        check_base_free(self.base)
        versions = list_versions(self.base)
        if not versions:
            raise TfprodError(f"{self.base} holds no version; export the serving model there "
                              "first (tfprod export MODEL BASE)")
        if log_url is None and stream is None:
            raise TfprodError("no stream; give the request log (--log URL) or a stream")
        self.name, self.log_url = model_name, log_url
        self.config_path = os.fspath(model_config_file)
        self.state_dir = os.path.abspath(os.fspath(state_dir or f"{self.base}.online"))
        os.makedirs(self.state_dir, exist_ok=True)
        self._lock = open(os.path.join(self.state_dir, ".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise TfprodError(f"{self.state_dir} is in use by another online loop; stop it "
                              "first (one loop per model)") from None
        self.strategy, self.learner_args = strategy, dict(learner_args or {})
        self.min_examples, self.max_examples = min_examples, max_examples
        self.margin, self.floor = margin, floor
        self.canary_min_requests, self.alpha = canary_min_requests, alpha
        self.canary_window_s, self.recent_every, self.chunk = canary_window_s, recent_every, chunk
        self.seed = seed
        if rollout not in ("canary", "shadow"):
            raise TfprodError(f"rollout {rollout!r}; expected canary or shadow")
        self.rollout = rollout
        self.say: Log = log or (lambda _m: None)
        self.stream = stream if stream is not None else LogStream(log_url, model_name)
        self.store = getattr(self.stream, "store", None)
        if self.store is None and log_url is not None:
            from tfprod.monitor.store import open_store

            self.store = open_store(log_url, create=False)
        self.holdout = holdout if isinstance(holdout, Examples) else load_holdout(holdout)
        self._holdout_name = "examples" if isinstance(holdout, Examples) else os.fspath(holdout)
        self.state = self._load_state()
        if self.state is None:
            stable = versions[-1]
            self.state = {"commit": 0, "round": 0, "stable": stable, "canary": None,
                          "canary_since": None, "stream": self.stream.state(),
                          "prequential": None, "strategy": strategy}
            self.learner = self._new_learner(self._keras_path(stable, keras_model))
            self._check_holdout()
            self.prequential = Prequential(self.learner, chunk=chunk)
            self._seed_buffer(stable)
            self._commit(stable_learner=True, event={"event": "start", "stable": stable})
            write_models_config(self.config_path, self.name, self.base, stable)
        else:
            if self.state["strategy"] != strategy:
                raise TfprodError(f"{self.state_dir} was written by the {self.state['strategy']}"
                                  f" learner; resume with --strategy {self.state['strategy']} or "
                                  "give another --state folder")
            held = "candidate" if self.state["canary"] is not None else "stable"
            self.learner = self._new_learner(os.path.join(self._current(), held,
                                                          "model.keras"))
            self.learner.restore(os.path.join(self._current(), held))
            self._check_holdout()
            self.prequential = Prequential(self.learner, chunk=chunk)
        self.stream.load_state(self.state["stream"])
        if self.state["prequential"]:
            self.prequential.load_state(self.state["prequential"])
        self._serving: dict[int, Any] = {}
        self._pending: list[Examples] = []
        self._idle = False  # the last poll found nothing (one "idle" line per quiet spell)

    # ------------------------------------------------------------------------ state

    def _check_holdout(self) -> None:
        inputs = self.learner.inputs
        check_holdout(self.holdout, inputs.names, {n: tuple(s.shape[1:]) for n, s in zip(
            inputs.names, inputs.specs, strict=True)}, self._holdout_name)

    def _keras_path(self, version: int, given: str | os.PathLike | None) -> str:
        inside = os.path.join(self.base, str(version), MODEL_FILE)
        if os.path.exists(inside):
            return inside
        if given is not None and os.path.exists(given):
            return os.fspath(given)
        raise TfprodError(f"version {version} of {self.base} has no {MODEL_FILE}; give the "
                          ".keras file it was exported from (--model MODEL.keras)")

    def _new_learner(self, keras_path: str) -> Learner:
        model = keras.saving.load_model(keras_path)
        if getattr(model, "optimizer", None) is None:
            raise TfprodError(f"{keras_path} has no optimizer; save the model after "
                              "model.compile(...) so it can keep learning")
        return make_learner(self.strategy, model, seed=self.seed, **self.learner_args)

    def _seed_buffer(self, version: int) -> None:
        """A replay buffer starts with the serving version's reference sample (a sample of
        the data it was trained on, kept by ``tfprod export --data``), when it has labels."""
        buffer = getattr(self.learner, "buffer", None)
        sample = os.path.join(self.base, str(version), "assets.extra", "tfprod",
                              "reference_sample.npz")
        if buffer is None or not os.path.exists(sample):
            return
        known = load_holdout(sample)
        if len(known) and known.y.dtype.kind in "iu":
            examples = self._valid(known)
            buffer.add({k: examples.x[k] for k in self.learner.inputs.names}, examples.y)

    def _current(self) -> str:
        return os.path.join(self.state_dir, f"commit-{self.state['commit']}")

    def _load_state(self) -> dict[str, Any] | None:
        pointer = os.path.join(self.state_dir, "CURRENT")
        if not os.path.exists(pointer):
            return None
        with open(pointer, encoding="utf-8") as f:
            name = f.read().strip()
        with open(os.path.join(self.state_dir, name, "state.json"), encoding="utf-8") as f:
            return json.load(f)

    def _commit(self, *, stable_learner: bool = False, candidate_learner: bool = False,
                event: dict[str, Any] | None = None) -> None:
        """Write the whole state to a new ``commit-N`` and point ``CURRENT`` at it."""
        previous = self._current() if self.state["commit"] else None
        self.state["commit"] += 1
        self.state["stream"] = self.stream.state()
        self.state["prequential"] = self.prequential.state()
        tmp = tempfile.mkdtemp(prefix=".tmp-commit-", dir=self.state_dir)
        for part, fresh in (("stable", stable_learner), ("candidate", candidate_learner)):
            if fresh:
                self.learner.save(os.path.join(tmp, part))
            elif previous is not None and os.path.isdir(os.path.join(previous, part)):
                shutil.copytree(os.path.join(previous, part), os.path.join(tmp, part))
        with open(os.path.join(tmp, "state.json"), "w", encoding="utf-8") as f:
            json.dump(self.state, f)
        final = self._current()
        os.rename(tmp, final)
        pointer = os.path.join(self.state_dir, ".CURRENT.tmp")
        with open(pointer, "w", encoding="utf-8") as f:
            f.write(os.path.basename(final))
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, os.path.join(self.state_dir, "CURRENT"))
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        if event is not None:
            self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), "round": self.state["round"], **event}
        with open(os.path.join(self.state_dir, "events.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
        self.say(" ".join(f"{k}={v}" for k, v in event.items() if k != "time"))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()
        self._lock.close()

    # ------------------------------------------------------------------------ the loop

    def step(self) -> dict[str, Any]:
        """One step: the canary's verdict when one is out, else a learning round."""
        check_base_free(self.base)
        if self.state["canary"] is not None:
            return self._judge_canary()
        return self._round()

    def _serving_predict(self, version: int) -> Any:
        from tfprod.export.predict import SavedModelPredictor

        if version not in self._serving:
            self._serving = {version: SavedModelPredictor(  # takes inputs by name
                os.path.join(self.base, str(version)),
                output=output_names(self.learner.model)[0])}
        return self._serving[version]

    def _valid(self, examples: Examples) -> Examples:
        """The examples whose labels are class indices; a line for the others."""
        y = np.asarray(examples.y, dtype=np.float64)
        ok = np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y < self.learner.classes)
        if not ok.all():
            bad = examples.y[~ok][:3].tolist()
            self._event({"event": "dropped", "examples": int((~ok).sum()),
                         "reason": f"label(s) {bad} are not class indices 0.."
                                   f"{self.learner.classes - 1} of the model; those examples "
                                   "are not learned"})
        return examples.take(np.flatnonzero(ok))

    def _drain_notes(self) -> None:
        """The stream's dropped examples, one ``dropped`` event each."""
        notes = getattr(self.stream, "notes", None)
        while notes:
            self._event({"event": "dropped", **notes.pop(0)})

    def _round(self) -> dict[str, Any]:
        # Examples wait in memory until a round has enough; the stream's committed cursor
        # still points before them, so after a crash they are read again.
        want = None if self.max_examples is None else self.max_examples - sum(
            len(p) for p in self._pending)
        arrived = self.stream.poll(want)
        self._drain_notes()
        self._pending.append(arrived)
        examples = Examples.concat(self._pending)
        if len(examples) < self.min_examples:
            if getattr(self.stream, "done", False):
                self._event({"event": "stream_end", "examples": len(examples),
                             "reason": f"the stream ended with {len(examples)} labelled "
                                       f"example(s) waiting, fewer than min_examples="
                                       f"{self.min_examples}; they are not learned and "
                                       "nothing was published"})
            elif not len(arrived) and not self._idle:
                self._event({"event": "idle", "examples": len(examples),
                             "reason": f"no new labelled examples; {len(examples)} of the "
                                       f"{self.min_examples} a round needs are waiting"})
            self._idle = not len(arrived)
            return {"action": "wait", "examples": len(examples),
                    "done": bool(getattr(self.stream, "done", False))}
        self._idle = False
        self._pending = []
        self.state["round"] += 1
        examples = self._valid(examples)
        index = np.arange(len(examples))
        recent_mask = (index % self.recent_every == self.recent_every - 1) if \
            self.recent_every else np.zeros(len(examples), bool)
        train, recent = examples.take(index[~recent_mask]), examples.take(index[recent_mask])
        drifts: list[int] = []

        def on_drift(seen: int) -> None:
            drifts.append(seen)

        start = time.perf_counter()
        self.prequential.run(train, on_drift=on_drift)
        if drifts:  # a change: learn the new data again, then keep what is known now
            self.learner.learn(train.x, train.y)
            self.learner.consolidate(train.x, train.y)
        seconds = time.perf_counter() - start
        stable = self.state["stable"]
        decision = evaluate_gate(self.learner.predict, self._serving_predict(stable),
                                 self.holdout, recent=recent if len(recent) else None,
                                 margin=self.margin, floor=self.floor, baseline_version=stable)
        summary = {"examples": len(train), "recent": len(recent), "seconds": round(seconds, 2),
                   "window_accuracy": round(self.prequential.window_accuracy, 4),
                   "drifts": len(drifts), "candidate": round(decision.candidate, 4),
                   "baseline": round(decision.baseline, 4)}
        if not decision.blessed:
            folder = os.path.join(self.state_dir, "rejected", str(self.state["round"]))
            self.learner.save(folder)
            decision.write(folder)
            # back to what the serving version knows
            self.learner.restore(os.path.join(self._current(), "stable"))
            self._commit(event={"event": "rejected", **summary,
                                "reasons": decision.reasons, "kept": folder})
            return {"action": "rejected", "decision": decision, **summary}
        if self.strategy in ("ewc", "lwf") and not drifts:
            self.learner.consolidate(train.x, train.y)
        with tempfile.TemporaryDirectory() as tmp:
            keras_file = os.path.join(tmp, "model.keras")
            self.learner.model.save(keras_file)
            with open(keras_file, "rb") as f:
                model_bytes = f.read()
            result = export_saved_model(
                self.learner.model, self.base, reference_data=(self.holdout.x, self.holdout.y),
                extra_files={GATE_FILE: decision.to_bytes(), MODEL_FILE: model_bytes})
        self.state.update(canary=result.version, canary_since=time.time())
        self._commit(candidate_learner=True, event={"event": "canary", **summary,
                                                    "version": result.version})
        write_models_config(self.config_path, self.name, self.base, stable, result.version,
                            label=self.rollout)
        if self.log_url is None:  # no labelled traffic to judge it on: the gate decides
            return self._promote({"action": "promote", "reason": "no request log"})
        return {"action": "canary", "version": result.version, "decision": decision, **summary}

    def _arm_counts(self) -> dict[int, tuple[int, int]]:
        """(right, labelled) per version among requests served since the candidate went out."""
        return version_accuracy(self.store, self.name, since=self.state["canary_since"],
                                output=output_names(self.learner.model)[0])

    def _judge_canary(self) -> dict[str, Any]:
        canary, stable = self.state["canary"], self.state["stable"]
        counts = self._arm_counts()
        expired = self.canary_window_s is not None and \
            time.time() - self.state["canary_since"] > self.canary_window_s
        v = verdict(counts.get(canary, (0, 0)), counts.get(stable, (0, 0)),
                    min_requests=self.canary_min_requests, alpha=self.alpha, expired=expired)
        figures = {"canary": canary, "stable": stable, "canary_accuracy": v.canary_accuracy,
                   "stable_accuracy": v.stable_accuracy, "canary_n": v.canary_n,
                   "stable_n": v.stable_n, "p_worse": v.p_worse, "reason": v.reason}
        if v.action == "wait":
            return {"action": "wait", **figures}
        if v.action == "promote":
            return self._promote({"action": "promote", **figures})
        write_models_config(self.config_path, self.name, self.base, stable)
        self.learner.restore(os.path.join(self._current(), "stable"))
        self.state.update(canary=None, canary_since=None)
        self._commit(event={"event": "rollback", **figures})
        return {"action": "rollback", **figures}

    def _promote(self, figures: dict[str, Any]) -> dict[str, Any]:
        canary = self.state["canary"]
        write_models_config(self.config_path, self.name, self.base, canary)
        self.state.update(stable=canary, canary=None, canary_since=None)
        self._commit(stable_learner=True, event={"event": "promote", **figures})
        return figures

    def run(self, *, interval: float = 60.0, rounds: int | None = None,
            stop: Any = None, on_step: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Step every ``interval`` seconds until ``stop`` (a ``threading.Event``) is set or
        ``rounds`` learning rounds ran; returns the rounds run."""
        ran = 0
        while stop is None or not stop.is_set():
            result = self.step()
            if on_step is not None:
                on_step(result)
            if result["action"] in ("canary", "rejected", "promote") and "examples" in result:
                ran += 1
            if rounds is not None and ran >= rounds:
                break  # a canary still out is judged by the next run
            if result["action"] == "wait" and getattr(self.stream, "done", False):
                break
            if stop is not None:
                stop.wait(interval)
            else:
                time.sleep(interval)
        return ran
