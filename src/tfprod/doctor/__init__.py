"""Why is my model not learning? Ranked findings with the evidence and the fix.

- :func:`diagnose`: runs the checks on a compiled model and a ``tf.data.Dataset``.
- :class:`DoctorReport`, :class:`Finding`: what it returns (JSON and Markdown renderings).
- :func:`load_model`, :func:`load_data`: what ``tfprod doctor --model ... --data ...`` loads
  (they live in :mod:`tfprod.models`; published here too, as before).

Names load on first use: importing this package does not import TensorFlow.
"""

from tfprod.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CHECKS": "finding",
    "DoctorReport": "finding",
    "Finding": "finding",
    "MODES": "diagnose",
    "SEVERITIES": "finding",
    "diagnose": "diagnose",
    "load_data": "tfprod.models",
    "load_model": "tfprod.models",
    "rank": "finding",
})
