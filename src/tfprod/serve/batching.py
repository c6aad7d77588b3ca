"""Dynamic batching: concurrent requests merged into one model call, then split back.

TF Serving's ``BasicBatchScheduler`` semantics, in numpy: requests for the same queue key (one
servable + signature + input shapes) wait until ``max_batch_size`` instances are queued, or the
oldest has waited ``batch_timeout_micros``, and a batch thread is free; the thread concatenates
them along dim 0, pads the batch to the next ``allowed_batch_sizes`` entry (repeating the first
row) and, with ``pad_variable_length_inputs``, pads dims 1+ to the largest in the batch (with
each tensor's first element), runs the model once, and slices each request's rows back out.

The queue is bounded: beyond ``max_enqueued_batches * max_batch_size`` pending instances a request
fails at once with RESOURCE_EXHAUSTED. A request whose deadline passes while it waits fails with
DEADLINE_EXCEEDED without running; a cancelled one is dropped. A request larger than
``max_batch_size`` runs alone, unsplit.

Two departures from TF Serving, both for latency at low load:

- A partial batch does not wait out ``batch_timeout_micros`` when no request is on its way to
  the queue. Front ends announce each request as it arrives (:meth:`DynamicBatcher.expect`) and
  submit it with ``expected=True``; a queue holding such requests runs as soon as every announced
  request is queued, since only a request that has not reached the server yet could still join
  it. A lone request (concurrency 1) then runs at once instead of after the timeout; under load
  the batches are the requests that arrived while the previous batch ran. Requests submitted
  without an announcement (library callers) keep TF Serving's timeout.
- Results go back to an event loop in one ``call_soon_threadsafe`` per batch
  (:meth:`DynamicBatcher.submit_async`), and the loop wakes a batch thread once per loop
  iteration, not once per request: everything parsed in one iteration joins the same batch.

The batcher knows nothing of TensorFlow: it calls ``run(inputs) -> outputs`` on numpy dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from tfprod.serve.config import BatchingParameters
from tfprod.serve.errors import (
    ServingError,
    deadline_exceeded,
    internal,
    invalid_argument,
    resource_exhausted,
    unavailable,
)
from tfprod.serve.metrics import ServingMetrics

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


class _Task:
    """One request in a queue. ``future`` is a concurrent Future, or an asyncio Future owned by
    ``loop`` (then only that loop's thread may resolve it)."""

    __slots__ = ("inputs", "size", "future", "loop", "deadline", "enqueued", "expected",
                 "on_done")

    def __init__(self, inputs: Arrays, size: int, deadline: float | None, future: Any,
                 loop: asyncio.AbstractEventLoop | None, expected: bool,
                 on_done: Callable[[], None] | None):
        self.inputs = inputs
        self.size = size
        self.future = future
        self.loop = loop
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.expected = expected
        self.on_done = on_done

    def claim(self) -> bool:
        """False when the caller cancelled the request (it is then dropped); else it runs."""
        if self.loop is None:
            return self.future.set_running_or_notify_cancel()
        return not self.future.done()


class _Queue:
    __slots__ = ("key", "run", "mergeable", "tasks", "items", "expected")

    def __init__(self, key: Hashable, run: RunFn, mergeable: bool):
        self.key, self.run, self.mergeable = key, run, mergeable
        self.tasks: deque[_Task] = deque()
        self.items = 0
        self.expected = 0  # tasks announced by a front end (see DynamicBatcher.expect)


def _resolve(items: list[tuple[Any, Any, BaseException | None]]) -> None:
    """On the event loop: set each asyncio future's result or exception (unless it is done)."""
    for future, result, error in items:
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


def _deliver(tasks: Sequence[_Task], results: Sequence[Any] | None,
             error: BaseException | None = None) -> None:
    """Resolve each task's future with its result (or ``error``): concurrent futures now,
    asyncio ones with one ``call_soon_threadsafe`` per event loop. Each task's ``on_done`` runs
    first, so a caller holding its answer knows the request has left the batcher."""
    for t in tasks:
        if t.on_done is not None:
            t.on_done()
    by_loop: dict[Any, list] = {}
    for i, t in enumerate(tasks):
        result = None if results is None else results[i]
        if t.loop is None:
            if error is None:
                t.future.set_result(result)
            else:
                t.future.set_exception(error)
        else:
            by_loop.setdefault(t.loop, []).append((t.future, result, error))
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody waits for these answers any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)


def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` grown to ``shape`` (dims 1+), the new cells filled with its first element."""
    if array.shape[1:] == shape:
        return array
    fill = array.flat[0] if array.size else np.zeros((), array.dtype)[()]
    out = np.full((array.shape[0], *shape), fill, dtype=array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def merge_inputs(parts: Sequence[Arrays], *, allowed_batch_sizes: Sequence[int] = (),
                 pad_variable_length: bool = False,
                 ragged: Mapping[str, str] | None = None) -> tuple[Arrays, int, int]:
    """Concatenate requests along dim 0 and pad the batch.

    Args:
        ragged: the inputs whose dim 0 is not the batch: ``NAME.values`` -> ``NAME.row_lengths``
            (concatenated as they are; a padding row repeats the first request's first list).

    Returns:
        (merged inputs, real batch size, padded batch size).

    Raises:
        ServingError: INVALID_ARGUMENT when inputs differ in dims 1+ and padding is off.
    """
    ragged = ragged or {}
    rows = next((k for k in parts[0] if k not in ragged), None)
    sizes = [p[rows].shape[0] for p in parts] if rows is not None else [0] * len(parts)
    total = sum(sizes)
    target = next((b for b in allowed_batch_sizes if b >= total), total)
    merged: Arrays = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if name in ragged:
            if target > total:
                first = parts[0][name][:int(parts[0][ragged[name]][:1].sum())]
                arrays.append(np.tile(first, target - total))
            merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            continue
        inner = {a.shape[1:] for a in arrays}
        if len(inner) > 1:
            if not pad_variable_length or len({len(s) for s in inner}) > 1:
                raise invalid_argument(
                    f"Tensors with name {name!r} from different requests have different shapes "
                    "and padding is turned off; set pad_variable_length_inputs to true, or send "
                    "equal dimensions after the first")
            shape = tuple(max(dims) for dims in zip(*inner, strict=True))
            arrays = [_pad_to(a, shape) for a in arrays]
        if target > total:
            arrays.append(np.repeat(arrays[0][:1], target - total, axis=0))
        merged[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return merged, total, target


def split_outputs(outputs: Arrays, sizes: Sequence[int], padded: int) -> list[Arrays]:
    """Slice each request's rows out of the batch outputs (views, no copies).

    Raises:
        ServingError: INTERNAL when an output has no batch dimension of size ``padded``.
    """
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != padded:
            raise internal(f"output {name!r} has shape {list(value.shape)}; a batched signature "
                           f"must return {padded} rows (its batch dimension first)")
    results, start = [], 0
    for size in sizes:
        end = start + size
        results.append({k: v[start:end] for k, v in outputs.items()})
        start = end
    return results


class DynamicBatcher:
    """A bounded queue per key and ``num_batch_threads`` threads that run merged batches.

    Example::

        batcher = DynamicBatcher(BatchingParameters(max_batch_size=64, batch_timeout_micros=500))
        future = batcher.submit(("model", 1, "serving_default"), run_fn, {"x": x}, len(x))
        outputs = future.result()
        batcher.close()

    On an event loop, ``await batcher.submit_async(...)`` instead; front ends call
    :meth:`expect` when a request arrives and submit it with ``expected=True``.

    Args:
        params: the batching parameters (max batch size, timeout, threads, queue bound, padding).
        metrics: where batch sizes, padding and queueing latency are recorded (None: nowhere).
        name: the batch threads' name (and the ``thread_pool_name`` metric label).
    """

    def __init__(self, params: BatchingParameters, *, metrics: ServingMetrics | None = None,
                 name: str = "model_server_batch_threads"):
        self.params = params
        self.metrics = metrics
        self.name = name
        self.batch_calls = 0
        self._max = params.max_batch_size
        self._timeout = params.batch_timeout_micros / 1e6
        self._limit = params.max_pending
        self._allowed = tuple(params.allowed_batch_sizes)
        self._pad = params.pad_variable_length_inputs
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[Hashable, _Queue] = {}
        self._pending = 0
        self._queued = 0      # tasks in the queues
        self._arriving = 0    # announced by expect(), not yet submitted
        self._idle = 0
        self._closed = False
        self._wake_scheduled = False
        self._threads = [threading.Thread(target=self._worker, name=f"{name}_{i}", daemon=True)
                         for i in range(params.num_batch_threads)]
        for t in self._threads:
            t.start()

    @property
    def pending(self) -> int:
        """Instances waiting in the queues now."""
        return self._pending

    @property
    def num_threads(self) -> int:
        """The threads that run batches."""
        return len(self._threads)

    # ------------------------------------------------------------------------ arrivals

    def expect(self) -> None:
        """Announce a request that a front end is receiving: queues holding announced requests
        wait for it (up to their timeout) before running. Follow with ``submit(...,
        expected=True)`` or, when the request fails before that, :meth:`unexpect`."""
        with self._cond:
            self._arriving += 1

    def unexpect(self) -> None:
        """Withdraw one :meth:`expect` whose request will not be submitted."""
        with self._cond:
            self._arriving -= 1
            if not self._arriving and self._idle and self._queued:
                self._cond.notify()

    # ------------------------------------------------------------------------ submitting

    def _enqueue(self, task: _Task, key: Hashable, run: RunFn, mergeable: bool) -> _Queue:
        """Under the lock: check the bounds and queue ``task``."""
        size = task.size
        if task.expected:
            self._arriving -= 1
        if self._closed:
            error = unavailable("The server is shutting down; the request was not queued")
        elif self._pending and self._pending + size > self._limit:
            error = resource_exhausted(
                "The batch scheduling queue to which this task was submitted is full "
                f"({self._pending} instances pending, limit {self._limit} = "
                "max_enqueued_batches * max_batch_size); retry later")
        else:
            error = None
        if error is not None:
            if task.expected and not self._arriving and self._idle and self._queued:
                self._cond.notify()  # queues that waited for this request may run now
            raise error
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue(key, run, mergeable)
        q.tasks.append(task)
        q.items += size
        q.expected += task.expected
        self._pending += size
        self._queued += 1
        return q

    def submit(self, key: Hashable, run: RunFn, inputs: Arrays, size: int, *,
               deadline: float | None = None, mergeable: bool = True,
               expected: bool = False, on_done: Callable[[], None] | None = None) -> Future:
        """Queue one request; its future resolves to its own rows of the outputs.

        Args:
            key: requests with equal keys may be merged (same model, signature, input shapes).
            run: the model call for this key, on numpy inputs (first request's ``run`` is kept).
            inputs: name -> array, batch dimension first, all of ``size`` rows.
            size: the request's batch size.
            deadline: ``time.monotonic()`` after which the request must not start.
            mergeable: False runs this key's requests one at a time.
            expected: the request was announced with :meth:`expect` (this ends the
                announcement, whether or not it is queued).
            on_done: called (on a batch thread) once the request has left the batcher: run,
                expired or dropped; not called when this method raises.

        Raises:
            ServingError: RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE after close().
        """
        task = _Task(inputs, size, deadline, Future(), None, expected, on_done)
        with self._cond:
            q = self._enqueue(task, key, run, mergeable)
            if self._idle and (len(q.tasks) == 1 or q.items >= self._max or not mergeable
                               or (expected and not self._arriving)):
                self._cond.notify()
        return task.future

    def submit_async(self, key: Hashable, run: RunFn, inputs: Arrays, size: int, *,
                     deadline: float | None = None, mergeable: bool = True,
                     expected: bool = False, on_done: Callable[[], None] | None = None
                     ) -> asyncio.Future:
        """:meth:`submit` for a caller on an event loop thread: returns an asyncio Future.

        The batch threads are woken once at the end of the loop's current iteration, so every
        request the loop parses in that iteration can join the same batch.

        Raises:
            ServingError: as :meth:`submit`.
        """
        loop = asyncio.get_running_loop()
        task = _Task(inputs, size, deadline, loop.create_future(), loop, expected, on_done)
        with self._cond:
            self._enqueue(task, key, run, mergeable)
            schedule = not self._wake_scheduled
            self._wake_scheduled = True
        if schedule:
            loop.call_soon(self._wake)
        return task.future

    def _wake(self) -> None:
        with self._cond:
            self._wake_scheduled = False
            if self._idle and self._queued:
                self._cond.notify(min(self._idle, self._queued))

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, refuse new requests, and stop the batch threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)

    # ------------------------------------------------------------------------ batch threads

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    batch, queue, expired, wait = self._take(time.monotonic())
                    if batch or expired:
                        break
                    if self._closed and not self._queues:
                        return
                    self._idle += 1
                    self._cond.wait(wait)
                    self._idle -= 1
            if expired:
                now = time.monotonic()
                for t in expired:
                    _deliver((t,), None, deadline_exceeded(
                        f"Deadline exceeded: the request waited {1000 * (now - t.enqueued):.0f} "
                        "ms in the batching queue and was not run"))
            if batch:
                self._run(queue, batch)

    def _ready(self, q: _Queue, now: float) -> bool:
        return (not q.mergeable or q.items >= self._max or self._closed
                or now - q.tasks[0].enqueued >= self._timeout
                or (q.expected > 0 and not self._arriving))

    def _take(self, now: float) -> tuple[list[_Task], _Queue | None, list[_Task], float | None]:
        """Under the lock: the oldest ready queue's next batch, expired tasks, and how long to
        wait when nothing is ready (None: until notified)."""
        best: _Queue | None = None
        wake: float | None = None
        for q in self._queues.values():
            head = q.tasks[0].enqueued
            if self._ready(q, now):
                if best is None or head < best.tasks[0].enqueued:
                    best = q
            else:
                due = head + self._timeout - now
                wake = due if wake is None else min(wake, due)
        if best is None:
            return [], None, [], wake
        batch: list[_Task] = []
        expired: list[_Task] = []
        n = 0
        tasks = best.tasks
        while tasks:
            t = tasks[0]
            if batch and (not best.mergeable or n + t.size > self._max):
                break
            tasks.popleft()
            best.items -= t.size
            best.expected -= t.expected
            self._pending -= t.size
            self._queued -= 1
            if not t.claim():  # cancelled by its caller: dropped
                if t.on_done is not None:
                    t.on_done()
                continue
            if t.deadline is not None and now > t.deadline:
                expired.append(t)
            else:
                batch.append(t)
                n += t.size
        if not tasks:
            del self._queues[best.key]
        if not batch and not expired:  # all of it was cancelled: look at the other queues
            return self._take(now)
        return batch, best, expired, None

    def _run(self, queue: _Queue, batch: list[_Task]) -> None:
        start = time.monotonic()
        run = queue.run
        try:
            if len(batch) == 1 and (not self._allowed or not queue.mergeable):
                merged, total, target = batch[0].inputs, batch[0].size, batch[0].size
            else:
                merged, total, target = merge_inputs(
                    [t.inputs for t in batch], allowed_batch_sizes=self._allowed,
                    pad_variable_length=self._pad, ragged=getattr(run, "ragged_values", None))
            self.batch_calls += 1
            outputs = run(merged)
            if len(batch) == 1 and target == total:
                results = [outputs]
            else:
                results = split_outputs(outputs, [t.size for t in batch], target)
        except Exception as e:  # every failure goes to the requests, never kills the thread
            error = e if isinstance(e, ServingError) else internal(
                f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
            if len(batch) > 1 and isinstance(e, ServingError) and \
                    e.code.name == "INVALID_ARGUMENT":
                # A model that checks its inputs fails the whole batch for one bad request:
                # run them one by one, so only that request gets the error.
                for t in batch:
                    self._run(queue, [t])
                return
            _deliver(batch, None, error)
            return
        if self.metrics is not None:  # before the answers: a client then sees its batch
            self.metrics.record_batch([start - t.enqueued for t in batch],
                                      [t.size for t in batch], total, target, pool=self.name)
        _deliver(batch, results)
