"""``make_learner``: a learner by its strategy's name (finetune, replay, ewc, lwf).

It lives apart from :mod:`tfprod.online.learner`, which the strategies import for their base
class, so that no two modules import each other.
"""

from __future__ import annotations

from typing import Any

import keras

from tfprod.errors import TfprodError
from tfprod.online.ewc import EWC
from tfprod.online.learner import STRATEGIES, FineTune, Learner
from tfprod.online.lwf import LwF
from tfprod.online.replay import Replay


def make_learner(strategy: str, model: keras.Model, **kwargs: Any) -> Learner:
    """The learner named ``strategy`` (finetune, replay, ewc, lwf) around ``model``.

    ``kwargs`` go to its constructor (e.g. ``buffer_size`` for replay, ``strength`` for EWC).
    """
    kinds = {"finetune": FineTune, "replay": Replay, "ewc": EWC, "lwf": LwF}
    if strategy not in kinds:
        raise TfprodError(f"strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    return kinds[strategy](model, **kwargs)
