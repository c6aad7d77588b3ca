"""The model registry: which versions of which models are loaded, and routing requests to them.

Each configured model (:class:`~tfprod.serve.config.ModelSpec`) has a base folder whose numbered
sub-folders are its versions (hidden and non-numeric entries are ignored, so an exporter can
publish atomically: write ``.tmp-3/``, then rename it to ``3/``). The version policy picks the
versions to serve (``latest n``, ``all``, ``specific``); the registry polls the folder and:

- loads a new version, replays its warmup requests, and only then routes traffic to it;
- then unloads the versions the policy no longer wants: they leave routing at once, finish their
  in-flight requests, and are dropped (their memory is freed);
- keeps serving the previous version when a new one fails to load, reporting the failure as
  state END with its error;
- unloads versions whose folders were deleted once a wanted version is available.

States and status follow TF Serving's ``ModelVersionStatus`` (START, LOADING, AVAILABLE,
UNLOADING, END).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import tensorflow as tf

from tfprod.serve.batching import DynamicBatcher
from tfprod.serve.config import NAME_PATTERN, RUNTIMES, BatchingParameters, ModelSpec
from tfprod.serve.errors import (
    ServingError,
    failed_precondition,
    invalid_argument,
    not_found,
    unavailable,
)
from tfprod.serve.litert import TFLITE_FILE
from tfprod.serve.metrics import ServingMetrics, current
from tfprod.serve.servable import (
    CLASSIFY,
    PREDICT,
    REGRESS,
    Servable,
    SignatureInfo,
    TensorInfo,
    serving_error,
)
from tfprod.serve.split import (
    CANARY,
    SHADOW,
    STABLE,
    ABWeights,
    WeightedSplit,
    ab_weights_for,
    canary_share,
    check_ab_weights,
)

__all__ = ["CLASSIFY", "PREDICT", "REGRESS", "ModelRegistry", "Servable", "ServingEvent",
           "SignatureInfo", "TensorInfo", "VersionStatus", "canary_share"]

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
_KEEP_ENDED = 8  # ended versions whose status is still reported, per model


@dataclass(frozen=True)
class VersionStatus:
    """One version's state, as TF Serving's ``ModelVersionStatus`` reports it.

    Attributes:
        version: the version number.
        state: START, LOADING, AVAILABLE, UNLOADING or END.
        error_code: "OK" or the canonical code name, e.g. "UNKNOWN", "DATA_LOSS".
        error_message: "" when OK.
    """

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclass(frozen=True)
class ServingEvent:
    """A version changed state (what the server logs, one line each)."""

    model: str
    version: int
    state: str
    message: str = ""
    seconds: float = 0.0


class _Slot:
    """One version's lifecycle inside the registry."""

    __slots__ = ("version", "path", "state", "error", "servable", "stamp", "ended")

    def __init__(self, version: int, path: str):
        self.version, self.path = version, path
        self.state = START
        self.error: ServingError | None = None
        self.servable: Servable | None = None
        self.stamp: Any = None
        self.ended = 0.0

    def status(self) -> VersionStatus:
        if self.error is None:
            return VersionStatus(self.version, self.state)
        return VersionStatus(self.version, self.state, self.error.code.name, self.error.message)


class _Model:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.slots: dict[int, _Slot] = {}
        self.listing_error: str | None = None


SHADOW_QUEUE = 256  # shadow copies waiting for the shadow thread; beyond it they are dropped


@dataclass(frozen=True)
class _Route:
    latest: Servable | None
    versions: dict[int, Servable]
    labels: dict[str, int]
    canary: tuple[Servable, Servable] | None = None  # (stable, canary) while both serve
    shadow: Servable | None = None  # gets a copy of unversioned requests; answers nobody
    ab: WeightedSplit | None = None  # an A/B split by fixed weights (--ab_weights)
    weights: tuple[tuple[str, float], ...] = ()  # the configured A/B weights


def _check(kind: str, value: str) -> None:
    if not NAME_PATTERN.fullmatch(value or "") or value in (".", ".."):
        raise invalid_argument(f"{kind} {value!r} is not valid; expected letters, digits, '_', "
                               "'.' or '-'")


def list_versions(base_path: str) -> dict[int, str]:
    """Version number -> folder, for the numbered, non-hidden sub-folders of ``base_path``.

    Raises:
        OSError / tf.errors.OpError: when ``base_path`` cannot be listed.
    """
    found: dict[int, str] = {}
    if "://" in base_path:
        names = [n.rstrip("/") for n in tf.io.gfile.listdir(base_path)]
        entries = [(n, tf.io.gfile.isdir(os.path.join(base_path, n))) for n in names]
    else:
        with os.scandir(base_path) as it:
            entries = [(e.name, e.is_dir()) for e in it]
    for name, is_dir in entries:
        if is_dir and name.isdigit() and name.isascii():
            found.setdefault(int(name), os.path.join(base_path, name))
    return found


def _stamp(path: str) -> Any:
    """Changes when a version folder is rewritten (so a failed version is retried then)."""
    stamp = []
    for p in (path, os.path.join(path, "saved_model.pb"),
              os.path.join(path, "variables", "variables.index"), os.path.join(path, TFLITE_FILE)):
        try:
            if "://" in p:
                stamp.append(tf.io.gfile.stat(p).mtime_nsec)
            else:
                st = os.stat(p)
                stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except (OSError, tf.errors.OpError):
            stamp.append(None)
    return tuple(stamp)


def _wanted(policy: tuple, on_disk: dict[int, str]) -> set[int]:
    if policy[0] == "all":
        return set(on_disk)
    if policy[0] == "specific":
        return set(policy[1]) & set(on_disk)
    return set(sorted(on_disk, reverse=True)[: int(policy[1])])


class ModelRegistry:
    """Loads, routes to, swaps and unloads model versions.

    Example::

        registry = ModelRegistry([ModelSpec("digits", "/models/digits")]).start()
        with registry.acquire("digits") as servable:
            outputs = servable.predict(None, {"image": images})
        registry.close()

    Args:
        specs: the models to serve.
        batching: dynamic batching parameters; None runs each request as its own call.
        enable_warmup: replay ``assets.extra/tf_serving_warmup_requests`` before a version
            takes traffic (without that file: one call on zeros per signature whose inputs
            are numeric with known shapes).
        poll_wait_seconds: how often base folders are polled for new / deleted versions
            (``--file_system_poll_wait_seconds``); 0 or less: only at start and on reload.
        metrics: where metrics go (default: :func:`tfprod.serve.metrics.current`).
        on_event: called with a :class:`ServingEvent` on every state change.
        unload_grace_s: how long a version that left routing keeps accepting requests from
            callers that looked it up just before (``acquire`` holds it regardless).
        num_request_threads: threads running unbatched requests (default: CPU count).
        runtime: "tensorflow" or "litert" for models whose spec names no platform (see
            :mod:`tfprod.serve.litert`).
        canary_percent: when above 0, while a model has both a ``stable`` and a ``canary``
            version label (both AVAILABLE), requests that name neither a version nor a label
            go to the canary with this probability (0-100) and to the stable version
            otherwise, instead of to the latest version (TF Serving's rule, kept at 0); a
            request with a routing key (the client's ``X-Request-Id``) always lands on the
            same side (see :func:`canary_share`).
        ab_weights: A/B splits by fixed weights between version labels (see
            :mod:`tfprod.serve.split` and :func:`~tfprod.serve.split.parse_ab_weights`):
            unversioned requests of such a model go to one of its labels' versions by weight,
            sticky per routing key. A model cannot have both a split and a canary.
    """

    def __init__(self, specs: Sequence[ModelSpec] = (), *,
                 batching: BatchingParameters | None = None, enable_warmup: bool = True,
                 poll_wait_seconds: float = 1.0, metrics: ServingMetrics | None = None,
                 on_event: Callable[[ServingEvent], None] | None = None,
                 unload_grace_s: float = 0.5, num_request_threads: int | None = None,
                 runtime: str = "tensorflow", canary_percent: float = 0.0,
                 ab_weights: ABWeights | None = None):
        if runtime not in RUNTIMES:
            raise invalid_argument(f"runtime {runtime!r}; expected one of {list(RUNTIMES)}")
        if not 0.0 <= canary_percent <= 100.0:
            raise invalid_argument(f"canary_percent {canary_percent}; expected 0 to 100")
        self.canary_percent = float(canary_percent)
        self.ab_weights: ABWeights = dict(ab_weights or {})
        check_ab_weights(self.ab_weights, specs, self.canary_percent)
        self._random = random.Random()
        self.metrics = metrics if metrics is not None else current()
        self.runtime = runtime
        self.batching = batching
        self.enable_warmup = enable_warmup
        self.poll_wait_seconds = poll_wait_seconds
        self.unload_grace_s = unload_grace_s
        self.draining = False
        self._on_event = on_event
        if batching is not None:
            self._executor = DynamicBatcher(batching, metrics=self.metrics)
        else:
            threads = num_request_threads or os.cpu_count() or 1
            self._executor = DynamicBatcher(
                BatchingParameters(max_batch_size=1, num_batch_threads=threads,
                                   max_enqueued_batches=4096),
                name="model_server_request_threads")
        # Shadow copies run on their own thread and bounded queue: a slow or failing shadow
        # drops its copies (RESOURCE_EXHAUSTED) instead of taking threads from real requests.
        shadow_params = dataclasses.replace(
            batching or BatchingParameters(max_batch_size=1), num_batch_threads=1,
            max_enqueued_batches=SHADOW_QUEUE)
        self._shadow_executor = DynamicBatcher(shadow_params, name="shadow_threads")
        self._models: dict[str, _Model] = {}
        self._routes: dict[str, _Route] = {}
        self._lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._unloaders: list[threading.Thread] = []
        self._set_specs(specs)

    # ------------------------------------------------------------------------ lifecycle

    def start(self) -> ModelRegistry:
        """Load what every model's policy wants now (blocking), then start polling."""
        self.poll_once()
        if self.poll_wait_seconds > 0 and self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="model_poller",
                                            daemon=True)
            self._poller.start()
        return self

    def __enter__(self) -> ModelRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop polling, let in-flight requests finish, unload every version."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
        with self._sync_lock:
            with self._lock:
                slots = [(m, s) for m in self._models.values() for s in m.slots.values()
                         if s.state == AVAILABLE]
                self._routes = {}
            for model, slot in slots:
                self._unload(model, slot, wait=False, grace=0.0)
        self.wait_unloaded(timeout)
        self._executor.close(timeout)
        self._shadow_executor.close(timeout)

    def wait_unloaded(self, timeout: float | None = None) -> bool:
        """Wait until every unload in progress has finished; False if ``timeout`` passed."""
        end = None if timeout is None else time.monotonic() + timeout
        for t in list(self._unloaders):
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in self._unloaders)

    def ready(self) -> bool:
        """True when every configured model has at least one AVAILABLE version (and the server is
        not draining for shutdown): the readiness answer for load balancers."""
        if self.draining:
            return False
        routes = self._routes
        with self._lock:
            names = list(self._models)
        return all(routes.get(n) is not None and routes[n].latest is not None for n in names)

    def model_names(self) -> list[str]:
        """The configured model names, sorted."""
        with self._lock:
            return sorted(self._models)

    def specs(self) -> list[ModelSpec]:
        """The current model specs."""
        with self._lock:
            return [m.spec for m in self._models.values()]

    # ------------------------------------------------------------------------ routing

    def get(self, name: str, version: int | None = None, label: str | None = None,
            key: str | None = None) -> Servable:
        """The servable for a request: a version, a label's version, or the latest AVAILABLE
        (the stable or the canary version while a canary is out; ``key`` makes that choice
        sticky, see ``canary_percent``).

        Raises:
            ServingError: INVALID_ARGUMENT (bad name/label, or both version and label),
                NOT_FOUND (unknown model, version not available, unknown label),
                UNAVAILABLE (the label names a version that is not available).
        """
        route = self._routes.get(name)
        if route is None:
            _check("model name", name)
        if version is not None and label is not None:
            raise invalid_argument("give a version or a version label, not both")
        if label is not None:
            _check("version label", label)
            if route is None:
                raise not_found(f"Servable not found for request: Latest({name})")
            target = route.labels.get(label)
            if target is None:
                raise not_found(f"Unrecognized servable version label: {label} (model {name})")
            servable = route.versions.get(target)
            if servable is None:
                raise unavailable(f"Servable not found for request: Specific({name}, {target}): "
                                  f"label {label!r} names a version that is not available")
            return servable
        if version is not None:
            servable = route.versions.get(int(version)) if route is not None else None
            if servable is None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return servable
        if route is None or route.latest is None:
            raise not_found(f"Servable not found for request: Latest({name})")
        if route.ab is not None:
            return route.ab.choose(key, self._random)[1]
        if route.canary is not None:
            stable, canary = route.canary
            to_canary = (canary_share(key, self.canary_percent) if key is not None
                         else self._random.random() * 100 < self.canary_percent)
            return canary if to_canary else stable
        return route.latest

    def hold(self, name: str, version: int | None = None, label: str | None = None,
             key: str | None = None) -> Servable:
        """Like :meth:`get`, and holds the version until ``servable.release()``: an unload waits
        for it. :meth:`acquire` is the same as a context manager.

        Raises:
            ServingError: as :meth:`get`; UNAVAILABLE when the version is unloaded meanwhile.
        """
        for _ in range(3):
            servable = self.get(name, version, label, key)
            if servable.hold():
                return servable
        raise unavailable(f"Model {name} is being reloaded; retry the request")

    @contextmanager
    def acquire(self, name: str, version: int | None = None,
                label: str | None = None, key: str | None = None) -> Iterator[Servable]:
        """Like :meth:`get`, and holds the version for the whole request: an unload waits for
        it. Use it around everything a request does with the servable."""
        servable = self.hold(name, version, label, key)
        try:
            yield servable
        finally:
            servable.release()

    def has_model(self, name: str) -> bool:
        """Whether ``name`` is a configured model (no lock: one dictionary lookup)."""
        return name in self._models

    def status(self, name: str, version: int | None = None,
               label: str | None = None) -> list[VersionStatus]:
        """TF Serving's model_version_status: one entry per known version, newest first.

        Raises:
            ServingError: INVALID_ARGUMENT for a bad name, NOT_FOUND for an unknown model,
                version or label.
        """
        _check("model name", name)
        with self._lock:
            model = self._models.get(name)
            if model is None or not model.slots:
                raise not_found(f"Could not find any versions of model {name}")
            if label is not None:
                _check("version label", label)
                if label not in model.spec.labels:
                    raise not_found(f"Unrecognized servable version label: {label} "
                                    f"(model {name})")
                version = model.spec.labels[label]
            if version is not None:
                slot = model.slots.get(int(version))
                if slot is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [slot.status()]
            return [s.status() for _, s in sorted(model.slots.items(), reverse=True)]

    def record_arm(self, servable: Servable, status: str, seconds: float) -> None:
        """An unversioned request that a split (canary or A/B) sent to ``servable`` finished
        with ``status`` ("OK" or a code name) after ``seconds``: its arm's count, errors and
        latency (``:tfprod:rollout:*``). Front ends call it only when ``servable.arm`` is set:
        a model without a split pays one attribute check."""
        arm = servable.arm
        if arm is not None:
            self.metrics.record_arm(servable.name, servable.version, arm, status, seconds)

    def shadow(self, name: str, served: Servable) -> Servable | None:
        """The version labelled ``shadow`` (AVAILABLE, other than ``served``), held for one
        request (call its ``release()``), or None: it gets a copy of unversioned requests,
        whose answers are logged and never returned."""
        route = self._routes.get(name)
        shadow = route.shadow if route is not None else None
        if shadow is None or shadow is served or not shadow.hold():
            return None
        return shadow

    def copy_to_shadow(self, served: Servable, signature: str | None, inputs: Any,
                       request_id: str, hooks: Any) -> None:
        """Send a copy of an unversioned predict request that ``served`` answered to the
        model's ``shadow`` version, if any (REST and gRPC both call this once they have their
        answer): the shadow's answer goes to ``hooks.on_predict`` under the same request id
        (so feedback labels both), never to the client. The copy runs on the shadow thread; a
        shadow that fails, or is so slow that its queue is full, loses the copy (counted in
        ``:tfprod:rollout:shadow_copies{outcome="dropped"}``) and nothing else."""
        shadow = self.shadow(served.name, served)
        if shadow is None:
            return
        name, version = shadow.name, shadow.version
        start = time.perf_counter()
        try:
            future = shadow.submit(signature, inputs, executor=self._shadow_executor)
        except Exception:  # a full shadow queue, a shadow whose signature differs, ...
            shadow.release()
            self.metrics.record_shadow(name, version, ok=False)
            return

        def done(f: Any) -> None:
            shadow.release()
            ok = not f.cancelled() and f.exception() is None
            self.metrics.record_shadow(name, version, ok=ok)
            if ok:
                with contextlib.suppress(Exception):  # the request log must not break serving
                    hooks.on_predict(name, version, signature or "serving_default", inputs,
                                     f.result(), time.perf_counter() - start, request_id)

        future.add_done_callback(done)

    def rollout(self, name: str) -> dict[str, Any]:
        """The model's rollout now: its split (``"ab"``, ``"canary"`` or None), each arm's
        label, version, configured share and the requests, errors and mean latency counted
        for it since the server started, and the shadow version."""
        route = self._routes.get(name)
        if route is None:
            _check("model name", name)
            raise not_found(f"Could not find any versions of model {name}")
        arms: list[tuple[str, int | None, float | None]] = []
        kind = None
        if route.weights:
            kind = "ab"
            total = sum(w for _, w in route.weights)
            arms = [(label, route.labels.get(label), 100.0 * w / total)
                    for label, w in route.weights]
        elif route.canary is not None:
            kind = "canary"
            arms = [(STABLE, route.canary[0].version, 100.0 - self.canary_percent),
                    (CANARY, route.canary[1].version, self.canary_percent)]
        live = {label for label, _ in route.ab.arms} if route.ab is not None else None
        rows = []
        for label, version, share in arms:
            stats = self.metrics.arm_stats(name, version, label)
            rows.append({"arm": label, "version": version, "weight_percent": share,
                         "available": version in route.versions and (
                             live is None or label in live), **stats})
        shadow = None
        if route.shadow is not None:
            shadow = {"version": route.shadow.version,
                      **self.metrics.shadow_stats(name, route.shadow.version)}
        return {"model": name, "split": kind, "arms": rows, "shadow": shadow}

    def labels(self, name: str) -> dict[str, int]:
        """The model's version labels (label -> version)."""
        route = self._routes.get(name)
        return dict(route.labels) if route is not None else {}

    # ------------------------------------------------------------------------ configuration

    def reload_config(self, specs: Sequence[ModelSpec]) -> None:
        """Serve exactly ``specs`` (HandleReloadConfigRequest): new models load, removed ones
        unload, changed policies and labels apply. Blocks until the wanted versions loaded.

        Raises:
            ServingError: FAILED_PRECONDITION when a label names a version that is not available
                after loading (the rest of the config is applied).
        """
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise invalid_argument(f"model names must be unique; got {names}")
        check_ab_weights(self.ab_weights, specs, self.canary_percent)  # else keep the old one
        with self._sync_lock:
            self._set_specs(specs)
            self._sync_all()
        problems = []
        for spec in specs:
            route = self._routes.get(spec.name)
            for label, v in spec.labels.items():
                if route is None or v not in route.versions:
                    problems.append(f"label {label!r} of model {spec.name!r} -> version {v}")
        if problems:
            raise failed_precondition("Version labels name versions that are not available: "
                                      + "; ".join(problems))

    def _set_specs(self, specs: Sequence[ModelSpec]) -> None:
        with self._lock:
            wanted = {s.name: s for s in specs}
            for name in list(self._models):
                if name not in wanted:
                    model = self._models.pop(name)
                    for slot in model.slots.values():
                        if slot.state == AVAILABLE:
                            self._unload(model, slot, wait=False)
            for name, spec in wanted.items():
                if name in self._models:
                    self._models[name].spec = spec
                else:
                    self._models[name] = _Model(spec)
            self._publish()

    # ------------------------------------------------------------------------ polling

    def poll_once(self) -> None:
        """One poll of every model's folder: load wanted versions, unload unwanted ones."""
        with self._sync_lock:
            self._sync_all()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll_once()
            except Exception as e:  # a poll must never kill the poller
                self._emit(ServingEvent("*", 0, "POLL_ERROR", f"{type(e).__name__}: {e}"))

    def _sync_all(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            if not self._stop.is_set():
                self._sync(model)

    def _sync(self, model: _Model) -> None:
        spec = model.spec
        try:
            on_disk = list_versions(spec.base_path)
            model.listing_error = None
        except (OSError, tf.errors.OpError) as e:
            message = f"cannot list {spec.base_path}: {getattr(e, 'strerror', None) or e}"
            if model.listing_error != message:
                model.listing_error = message
                self._emit(ServingEvent(spec.name, 0, "NO_VERSIONS", message))
            return
        stamps: dict[int, Any] = {}

        def failed(v: int) -> bool:  # failed before and unchanged on disk: not retried
            slot = model.slots.get(v)
            if slot is None or slot.error is None:
                return False
            if v not in stamps:
                stamps[v] = _stamp(on_disk[v])
            return slot.stamp == stamps[v]

        # Versions that failed are left out of the policy, so "latest 1" with a corrupt newest
        # version serves the one before it; loop until every wanted version was tried.
        while True:
            wanted = _wanted(spec.policy, {v: p for v, p in on_disk.items() if not failed(v)})
            todo = [v for v in sorted(wanted, reverse=True)
                    if v not in model.slots or model.slots[v].state == END]
            if not todo or model.spec is not spec or self._stop.is_set():
                break
            for v in todo:
                self._load(model, v, on_disk[v], stamps.pop(v, None) or _stamp(on_disk[v]))
        with self._lock:
            ready = any(model.slots[v].state == AVAILABLE for v in wanted if v in model.slots)
            stale = [s for v, s in model.slots.items()
                     if s.state == AVAILABLE and v not in wanted and (ready or not wanted)]
        for slot in stale:
            self._unload(model, slot, wait=False)
        self._prune(model)

    # ------------------------------------------------------------------------ load / unload

    def _load(self, model: _Model, version: int, path: str, stamp: Any) -> None:
        name = model.spec.name
        slot = _Slot(version, path)
        slot.stamp = stamp
        with self._lock:
            model.slots[version] = slot
        self._state(model, slot, START)
        self._state(model, slot, LOADING)
        started = time.monotonic()
        try:
            servable = Servable(name, version, path, executor=self._executor,
                                batching=self.batching is not None, metrics=self.metrics,
                                runtime=model.spec.platform or self.runtime,
                                litert_threads=self._litert_threads())
            if self.enable_warmup:
                servable.warmup()
        except Exception as e:
            self.metrics.record_load(path, False)
            error = serving_error(e)
            if error.code == grpc.StatusCode.INTERNAL:
                error = ServingError(grpc.StatusCode.UNKNOWN, error.message)
            slot.error = ServingError(error.code, f"Failed to load version {version} of model "
                                                  f"{name} from {path}: {error.message}")
            slot.ended = time.monotonic()
            self._state(model, slot, END, slot.error.message, time.monotonic() - started)
            return
        self.metrics.record_load(path, True)
        slot.servable = servable
        if servable.fallback:
            self._emit(ServingEvent(name, version, "LITERT_FALLBACK", servable.fallback))
        warm = f", {servable.warmup_records} warmup requests" if servable.warmup_records else ""
        lite = sorted(k for k, r in servable.runtimes.items() if r == "litert")
        on = f", LiteRT for {', '.join(lite)}" if lite else ""
        self._state(model, slot, AVAILABLE, f"loaded from {path}{on}{warm}",
                    time.monotonic() - started)

    def _unload(self, model: _Model, slot: _Slot, *, wait: bool,
                grace: float | None = None) -> None:
        servable = slot.servable
        self._state(model, slot, UNLOADING)  # leaves routing now
        grace = self.unload_grace_s if grace is None else grace

        def finish() -> None:
            started = time.monotonic()
            if grace > 0:
                time.sleep(grace)
            if servable is not None:
                servable.close()
            slot.servable = None
            slot.ended = time.monotonic()
            gc.collect()
            self._state(model, slot, END, "unloaded", time.monotonic() - started)

        if wait:
            finish()
            return
        t = threading.Thread(target=finish, name=f"unload_{model.spec.name}_{slot.version}",
                             daemon=True)
        self._unloaders = [u for u in self._unloaders if u.is_alive()] + [t]
        t.start()

    def _litert_threads(self) -> int:
        """Threads per LiteRT interpreter: the cores shared among the threads that run models
        (each has its own interpreter)."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
        return max(1, cores // self._executor.num_threads)

    def _prune(self, model: _Model) -> None:
        with self._lock:
            ended = sorted((s for s in model.slots.values() if s.state == END and s.error is None),
                           key=lambda s: s.ended)
            for slot in ended[:-_KEEP_ENDED] if len(ended) > _KEEP_ENDED else []:
                del model.slots[slot.version]
                self.metrics.set_version_state(model.spec.name, slot.version, None)

    # ------------------------------------------------------------------------ state

    def _state(self, model: _Model, slot: _Slot, state: str, message: str = "",
               seconds: float = 0.0) -> None:
        with self._lock:
            slot.state = state
            self._publish()
        self.metrics.set_version_state(model.spec.name, slot.version, state)
        self._emit(ServingEvent(model.spec.name, slot.version, state, message, seconds))

    def _publish(self) -> None:
        """Rebuild the routing table (readers see the old or the new one, never a mix)."""
        routes: dict[str, _Route] = {}
        for name, model in self._models.items():
            versions = {v: s.servable for v, s in model.slots.items()
                        if s.state == AVAILABLE and s.servable is not None}
            policy = model.spec.policy
            # While a "specific" policy drops a version, it may still be AVAILABLE for a moment:
            # unversioned requests go to the newest version the policy wants.
            wanted = [v for v in versions if policy[0] != "specific" or v in policy[1]] \
                or list(versions)
            latest = versions[max(wanted)] if wanted else None
            labels = dict(model.spec.labels)
            pair = (versions.get(labels.get(STABLE, -1)), versions.get(labels.get(CANARY, -1)))
            # Only with --canary_percent > 0: otherwise unversioned requests go to the latest
            # version, as in TF Serving, whatever the labels.
            split = pair if self.canary_percent > 0 and pair[0] is not None and \
                pair[1] is not None and pair[0] is not pair[1] else None
            shadow = versions.get(labels.get(SHADOW, -1))
            if shadow is not None and versions.get(labels.get(STABLE, -1)) is not None:
                latest = versions[labels[STABLE]]  # the shadow answers nobody
            weights = ab_weights_for(self.ab_weights, model.spec) or ()
            ab = WeightedSplit.build([(label, w, versions.get(labels.get(label, -1)))
                                      for label, w in weights]) if weights else None
            if ab is not None:
                split = None  # check_ab_weights refuses a model with both
                arms = {s.version: label for label, s in ab.arms}
            elif split is not None:
                arms = {split[0].version: STABLE, split[1].version: CANARY}
            else:
                arms = {}
            for v, servable in versions.items():  # the arm each version plays now
                servable.arm = arms.get(v)
            routes[name] = _Route(latest, versions, labels, split, shadow, ab, weights)
            self.metrics.set_rollout(name, labels, self.canary_percent, weights)
        self._routes = routes

    def _emit(self, event: ServingEvent) -> None:
        if self._on_event is not None:
            with contextlib.suppress(Exception):  # a logging hook must not break loading
                self._on_event(event)

    # ------------------------------------------------------------------------ introspection

    @property
    def batcher(self) -> DynamicBatcher:
        """The batcher (or the per-request executor when batching is off)."""
        return self._executor
