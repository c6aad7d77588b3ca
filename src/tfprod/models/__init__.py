"""Models for the seed scenarios: presets, a GAN for the digits, stateful custom layers, and the
heads, metrics and ``Target`` layer of models trained on the user's labels; and what the
command line loads: :func:`load_model` (a ``.keras`` file or ``module:function``) and
:func:`load_data` (data shaped for that model), used by ``doctor``, ``export`` and ``optimize``.

Importing this package registers tfprod's Keras classes, so ``.keras`` files that use them load.
"""

from tfprod.models.gan import make_discriminator, make_generator
from tfprod.models.heads import compile_for_task, task_head
from tfprod.models.layers import RunningMeanNormalization
from tfprod.models.loading import load_model
from tfprod.models.losses import ScaledMeanSquaredError
from tfprod.models.metrics import MacroF1, task_metrics
from tfprod.models.model_data import load_data
from tfprod.models.presets import mlp, small_cnn
from tfprod.models.target import Target, find_target, find_task

__all__ = ["MacroF1", "RunningMeanNormalization", "ScaledMeanSquaredError",
           "Target", "compile_for_task", "find_target",
           "find_task", "load_data", "load_model", "make_discriminator", "make_generator",
           "mlp", "small_cnn",
           "task_head", "task_metrics"]
