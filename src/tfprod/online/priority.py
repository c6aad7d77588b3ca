"""``lower_priority``: let the server beside the loop keep the CPU.

On a machine the online loop shares with ``tfprod serve``, a round competes with the requests
for the cores. A higher niceness lets the kernel schedule the server first whenever both want
a core, and fewer TensorFlow threads keep the learner from spreading over every core (by
default TensorFlow sizes both of its thread pools to all of them). Both apply to the whole
process, for its lifetime; the thread pools only before TensorFlow runs its first operation.
"""

from __future__ import annotations

import os
from typing import Any

from tfprod.errors import TfprodError


def lower_priority(nice: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Raise this process's niceness by ``nice`` and give TensorFlow ``threads`` threads per
    pool (intra-op and inter-op; None: TensorFlow's default). Returns what is now in effect,
    read back: ``{"nice": ..., "intra_op_threads": ..., "inter_op_threads": ...}`` (0 threads:
    TensorFlow's default).

    Example:
        >>> lower_priority(10, threads=1)  # before the first model is loaded
    """
    if isinstance(nice, bool) or not isinstance(nice, int) or not 0 <= nice <= 19:
        raise TfprodError(f"nice {nice!r}; expected 0..19 (how much lower than now the "
                          "learner runs; 19 is the lowest priority)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise TfprodError(f"threads {threads!r}; expected a number of threads >= 1")
    if nice:
        os.nice(nice)
    import tensorflow as tf

    if threads is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as e:
            raise TfprodError(f"TensorFlow threads: {e}; set them before the first model is "
                              "loaded") from None
    return {"nice": os.getpriority(os.PRIO_PROCESS, 0),
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()}
