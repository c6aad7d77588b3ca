"""Why is my model not learning? Ranked findings with the evidence and the fix.

- :func:`diagnose`: runs the checks on a compiled model and a ``tf.data.Dataset``.
- :class:`DoctorReport`, :class:`Finding`: what it returns (JSON and Markdown renderings).
- :func:`load_model`, :func:`load_data`: what ``tfprod doctor --model ... --data ...`` loads
  (they live in :mod:`tfprod.models`; published here too, as before).
"""

from tfprod.doctor.diagnose import MODES, diagnose
from tfprod.doctor.finding import CHECKS, SEVERITIES, DoctorReport, Finding, rank
from tfprod.models import load_data, load_model

__all__ = [
    "CHECKS",
    "MODES",
    "SEVERITIES",
    "DoctorReport",
    "Finding",
    "diagnose",
    "load_data",
    "load_model",
    "rank",
]
