"""`tfprod.online`: continuous learning from the served traffic.

The loop: labelled requests from the request log (or a folder of new files, or any iterable of
batches) -> an incremental update that does not forget (experience replay, EWC, LwF) ->
the gate against the serving version on a fixed holdout -> a new version published with the
``canary`` label -> promoted to ``stable`` or rolled back on the canary's labelled traffic.

- :class:`LogStream`, :class:`FolderStream`, :class:`IterableStream`: where examples come from.
- :class:`ReservoirBuffer`: bounded replay memory (reservoir sampling, class-balanced option).
- :class:`FineTune`, :class:`Replay`, :class:`EWC`, :class:`LwF`, :func:`make_learner`: the
  learners, each under :class:`tfprod.train.Trainer`, each checkpointing its own state.
- :class:`Prequential`, :class:`PageHinkley`: predict-then-learn accuracy, drift of the error.
- :func:`evaluate_gate`, :class:`GateDecision`: TFX's blessing, with a margin and a floor.
- :func:`two_proportion_test`, :func:`write_models_config`: the canary's verdict and the
  label move.
- :class:`OnlineLoop`, :func:`online_status`: the loop behind ``tfprod online run``.
- :func:`lower_priority`: niceness and TensorFlow threads, so the server beside keeps the CPU.

Names load on first use; ``import tfprod.online`` does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "EWC": "ewc",
    "FineTune": "learner",
    "FolderStream": "stream",
    "GateDecision": "gate",
    "IterableStream": "stream",
    "Learner": "learner",
    "LogStream": "stream",
    "LwF": "lwf",
    "OnlineLoop": "loop",
    "PageHinkley": "drift",
    "Prequential": "prequential",
    "Replay": "replay",
    "ReservoirBuffer": "buffer",
    "evaluate_gate": "gate",
    "lower_priority": "priority",
    "make_learner": "strategies",
    "online_status": "status",
    "two_proportion_test": "rollout",
    "write_models_config": "rollout",
})
