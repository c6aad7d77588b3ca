"""tfprod's rules for what ``tf_upgrade_v2`` leaves broken on TF 2.21 with Keras 3.

Each rule names the APIs it covers (dotted names after import aliases are resolved, in the
spelling ``tf_upgrade_v2`` writes, ``tf.compat.v1.*``), what happens to them on TF 2.21 and
the TF2 replacement. Which uses can be rewritten safely is decided in
:mod:`tfprod.migrate.rewrites`; everything else is left for a person.

What the rules say was checked on TF 2.21.0 / Keras 3.15: ``tf.compat.v1.layers.*`` and
``tf.compat.v1.nn.rnn_cell.*`` raise ``AttributeError: ... is not available with Keras 3``;
``tf.layers``, ``tf.contrib``, ``tf.estimator`` and ``tf.compat.v1.estimator`` do not exist;
``tf.compat.v1.placeholder`` raises ``RuntimeError`` under eager execution, the default;
queue-based input raises ``RuntimeError: ... not supported when eager execution is enabled``;
``tf.compat.v1.get_variable`` inside a ``tf.function`` fails; ``tf_upgrade_v2`` itself rewrites
``tf.keras.optimizers.Adam`` to ``tf.keras.optimizers.legacy.Adam``, which raises
``ImportError`` under Keras 3.
"""

from __future__ import annotations

import dataclasses

from tfprod.migrate.finding import ADVICE, MANUAL

V1 = "tf.compat.v1."


@dataclasses.dataclass(frozen=True)
class Rule:
    """One family of TF1 APIs.

    Attributes:
        id: short id used in reports (``layers``, ``session``, ...).
        title: the APIs it covers, for people.
        names: dotted names it matches: ``"a.b."`` matches everything under ``a.b``; ``"a.b"``
            matches ``a.b`` itself and its attributes.
        what: what happens on TF 2.21 (``{symbol}`` is replaced by the name as written).
        why: the reason.
        replacement: the TF2 replacement when ``specific`` has nothing better.
        specific: last name component (or a longer suffix) -> a more precise replacement.
        action: ``manual`` or ``advice`` (automatic rewrites are decided per use).
    """

    id: str
    title: str
    names: tuple[str, ...]
    what: str
    why: str
    replacement: str
    specific: dict[str, str] = dataclasses.field(default_factory=dict)
    action: str = MANUAL

    def matches(self, name: str) -> int:
        """Length of the longest of :attr:`names` that covers ``name`` (0: none does)."""
        best = 0
        for n in self.names:
            if (name.startswith(n) if n.endswith(".") else
                    (name == n or name.startswith(n + "."))):
                best = max(best, len(n))
        return best

    def replacement_for(self, name: str) -> str:
        parts = name.split(".")
        for k in range(len(parts)):
            suffix = ".".join(parts[k:])
            if suffix in self.specific:
                return self.specific[suffix]
        return self.replacement


_KERAS_LAYER = {
    "dense": "Dense", "conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D",
    "conv2d_transpose": "Conv2DTranspose", "conv3d_transpose": "Conv3DTranspose",
    "separable_conv1d": "SeparableConv1D", "separable_conv2d": "SeparableConv2D",
    "batch_normalization": "BatchNormalization", "dropout": "Dropout", "flatten": "Flatten",
    "max_pooling1d": "MaxPooling1D", "max_pooling2d": "MaxPooling2D",
    "max_pooling3d": "MaxPooling3D", "average_pooling1d": "AveragePooling1D",
    "average_pooling2d": "AveragePooling2D", "average_pooling3d": "AveragePooling3D",
}
#: ``tf.compat.v1.layers`` function -> its Keras 3 layer class.
KERAS_LAYER_OF = dict(_KERAS_LAYER)
_LAYER_SPECIFIC = {
    fn: f"keras.layers.{cls}(...) created once (in __init__ of a keras.Model or tf.Module), "
        f"then called on the input" for fn, cls in _KERAS_LAYER.items()}
_LAYER_SPECIFIC.update({cls: f"keras.layers.{cls}" for cls in _KERAS_LAYER.values()})
_LAYER_SPECIFIC.update({
    "batch_normalization": "keras.layers.BatchNormalization() created once; call it with "
                           "training=...; its moving averages update without UPDATE_OPS",
    "Layer": "keras.layers.Layer (build() creates weights with self.add_weight)",
    "InputSpec": "keras.layers.InputSpec"})

_RNN = {
    "BasicRNNCell": "keras.layers.SimpleRNNCell(units)",
    "RNNCell": "keras.layers.Layer subclass with state_size and call(inputs, states)",
    "BasicLSTMCell": "keras.layers.LSTMCell(units) (unit_forget_bias=True is the default)",
    "LSTMCell": "keras.layers.LSTMCell(units)",
    "GRUCell": "keras.layers.GRUCell(units)",
    "MultiRNNCell": "keras.layers.StackedRNNCells([cells])",
    "DropoutWrapper": "dropout= / recurrent_dropout= arguments of the Keras cell",
    "ResidualWrapper": "a Keras layer that adds the cell's input to its output",
    "DeviceWrapper": "tf.device(...) around the layer's creation",
    "LSTMStateTuple": "a [h, c] list (Keras LSTM states)",
    "dynamic_rnn": "keras.layers.RNN(cell, return_sequences=True, return_state=True), or "
                   "keras.layers.LSTM/GRU",
    "static_rnn": "keras.layers.RNN(cell, return_sequences=True, unroll=True)",
    "bidirectional_dynamic_rnn": "keras.layers.Bidirectional(keras.layers.RNN(cell, "
                                 "return_sequences=True))",
    "static_bidirectional_rnn": "keras.layers.Bidirectional(keras.layers.RNN(cell, "
                                "unroll=True, return_sequences=True))",
    "raw_rnn": "a Python loop over time steps inside a tf.function",
    "LayerNormBasicLSTMCell": "keras.layers.LSTMCell plus keras.layers.LayerNormalization",
    "LSTMBlockCell": "keras.layers.LSTMCell", "GRUBlockCell": "keras.layers.GRUCell",
    "CudnnLSTM": "keras.layers.LSTM (uses cuDNN on GPU by itself)",
    "CudnnGRU": "keras.layers.GRU (uses cuDNN on GPU by itself)",
}

_CONTRIB = {
    "layers.fully_connected": "keras.layers.Dense(units, activation=...)",
    "layers.conv2d": "keras.layers.Conv2D",
    "layers.conv2d_transpose": "keras.layers.Conv2DTranspose",
    "layers.batch_norm": "keras.layers.BatchNormalization",
    "layers.layer_norm": "keras.layers.LayerNormalization",
    "layers.embed_sequence": "keras.layers.Embedding",
    "layers.flatten": "keras.layers.Flatten", "layers.dropout": "keras.layers.Dropout",
    "layers.l2_regularizer": "keras.regularizers.L2(scale / 2) (TF1's l2 was scale*sum(w**2)/2)",
    "layers.l1_regularizer": "keras.regularizers.L1(scale)",
    "layers.xavier_initializer": "keras.initializers.GlorotUniform()",
    "layers.variance_scaling_initializer": "keras.initializers.VarianceScaling",
    "layers.optimize_loss": "keras.optimizers + tf.GradientTape",
    "layers": "keras.layers", "slim": "keras.layers inside a keras.Model or tf.Module",
    "seq2seq": "a Keras RNN encoder-decoder; no maintained drop-in exists (TensorFlow Addons "
               "is archived): port the pieces used",
    "learn": "a keras.Model trained with fit (or tfprod.train.Trainer)",
    "training.HParams": "a dataclass", "training": "tf.data and a keras.Model",
    "framework.arg_scope": "functools.partial over the layer constructors",
    "framework": "tf.nest / tf.train / tf.Module (see the TF migration guide)",
    "metrics": "keras.metrics", "losses": "keras.losses", "opt": "keras.optimizers",
    "data": "tf.data", "distribute": "tf.distribute", "tpu": "tf.distribute.TPUStrategy",
    "lookup": "tf.lookup", "summary": "tf.summary", "image": "tf.image / keras.layers",
    "quantize": "LiteRT quantization (tfprod optimize)", "predictor": "tf.saved_model.load",
    "cudnn_rnn": "keras.layers.LSTM / GRU", "crf": "a CRF layer ported into the project",
}

_SESSION = {
    "Session": "no Session: call functions eagerly, or a @tf.function for graph speed",
    "InteractiveSession": "eager execution (the default) gives values at once",
    "placeholder": "an argument of a @tf.function with "
                   "input_signature=[tf.TensorSpec(shape, dtype, name)]",
    "placeholder_with_default": "a Python default argument of the function",
    "sparse_placeholder": "a tf.SparseTensorSpec argument of a @tf.function",
    "feed_dict": "pass the values as arguments of the function; "
                 "fetches become its return values",
    "global_variables_initializer": "nothing: TF2 variables are initialized when created",
    "local_variables_initializer": "nothing: TF2 variables are initialized when created",
    "variables_initializer": "nothing: TF2 variables are initialized when created",
    "initialize_all_variables": "nothing: TF2 variables are initialized when created",
    "tables_initializer": "nothing: tf.lookup tables initialize when created",
    "disable_eager_execution": "remove it: Keras 3 and tf.function need eager execution",
    "disable_v2_behavior": "remove it: Keras 3 and tf.function need TF2 behavior",
    "get_default_graph": "tf.function(...).get_concrete_function().graph to inspect a graph",
    "reset_default_graph": "nothing (no global graph in TF2); keras.backend.clear_session() "
                           "for Keras",
    "train.Saver": "tf.train.Checkpoint(model=..., optimizer=...) with "
                   "tf.train.CheckpointManager; read old checkpoints with "
                   "tf.train.load_checkpoint or `tfprod migrate model`",
    "train.MonitoredTrainingSession": "a training loop over tf.data with tf.train.Checkpoint",
    "train.MonitoredSession": "a training loop over tf.data with tf.train.Checkpoint",
    "train.SingularMonitoredSession": "a training loop with tf.train.Checkpoint",
    "train.Scaffold": "tf.train.Checkpoint",
    "summary.FileWriter": "tf.summary.create_file_writer(logdir)",
    "summary.merge_all": "tf.summary.scalar/histogram calls under the writer's as_default()",
}

_OPTIMIZERS = {
    "GradientDescentOptimizer": "SGD", "MomentumOptimizer": "SGD(momentum=...)",
    "AdamOptimizer": "Adam", "AdagradOptimizer": "Adagrad", "AdadeltaOptimizer": "Adadelta",
    "RMSPropOptimizer": "RMSprop", "FtrlOptimizer": "Ftrl",
    "ProximalAdagradOptimizer": "Adagrad", "ProximalGradientDescentOptimizer": "SGD",
    "Optimizer": "Optimizer",
}

_QUEUES = {
    "train.string_input_producer": "tf.data.Dataset.from_tensor_slices(filenames)",
    "train.input_producer": "tf.data.Dataset.from_tensor_slices",
    "train.range_input_producer": "tf.data.Dataset.range",
    "train.slice_input_producer": "tf.data.Dataset.from_tensor_slices",
    "train.batch": "dataset.batch(batch_size)",
    "train.batch_join": "tf.data.Dataset.interleave(...).batch(...)",
    "train.shuffle_batch": "dataset.shuffle(buffer_size).batch(batch_size)",
    "train.shuffle_batch_join": "dataset.interleave(...).shuffle(...).batch(...)",
    "train.maybe_batch": "dataset.filter(...).batch(...)",
    "train.maybe_shuffle_batch": "dataset.filter(...).shuffle(...).batch(...)",
    "train.start_queue_runners": "nothing: iterate the tf.data.Dataset",
    "train.QueueRunner": "tf.data", "train.add_queue_runner": "tf.data",
    "train.queue_runner": "tf.data",
    "train.Coordinator": "nothing for input (tf.data has no threads to stop)",
    "TFRecordReader": "tf.data.TFRecordDataset(filenames)",
    "TextLineReader": "tf.data.TextLineDataset(filenames)",
    "FixedLengthRecordReader": "tf.data.FixedLengthRecordDataset(filenames, record_bytes)",
    "WholeFileReader": "tf.data.Dataset.from_tensor_slices(paths).map(tf.io.read_file)",
    "IdentityReader": "tf.data", "LMDBReader": "tf.data", "ReaderBase": "tf.data",
    "FIFOQueue": "tf.data (dataset.prefetch); tf.queue.FIFOQueue for queues between threads",
    "RandomShuffleQueue": "dataset.shuffle(buffer_size)",
    "PaddingFIFOQueue": "dataset.padded_batch(...)", "PriorityQueue": "tf.data",
}

RULES: dict[str, Rule] = {r.id: r for r in [
    Rule(
        "layers", "tf.layers.* / tf.compat.v1.layers.*",
        ("tf.layers.", V1 + "layers."),
        "`{symbol}` raises AttributeError on TF 2.21: not available with Keras 3",
        "tf.compat.v1.layers is built on the Keras 2 layers of tf_keras, which TF 2.21 refuses "
        "when Keras 3 is installed; tf.layers no longer exists and tf_upgrade_v2 in TF 2.21 "
        "leaves it unrenamed",
        "the keras.layers class of the same name, created once and called on the input",
        _LAYER_SPECIFIC),
    Rule(
        "rnn-cell", "tf.nn.rnn_cell.* / tf.compat.v1.nn.rnn_cell.* / dynamic_rnn",
        ("tf.nn.rnn_cell.", V1 + "nn.rnn_cell.", "tf.contrib.rnn.", "tf.nn.dynamic_rnn",
         V1 + "nn.dynamic_rnn", "tf.nn.static_rnn", V1 + "nn.static_rnn",
         "tf.nn.bidirectional_dynamic_rnn", V1 + "nn.bidirectional_dynamic_rnn",
         V1 + "nn.static_bidirectional_rnn", V1 + "nn.raw_rnn", V1 + "nn.static_state_saving_rnn"),
        "`{symbol}` fails on TF 2.21: the RNN cells are not available with Keras 3",
        "the tf.compat.v1 RNN cells are Keras 2 layers (tf_keras); dynamic_rnn and friends need "
        "them (or a TF1 graph) to run",
        "keras.layers.RNN / LSTM / GRU with the matching Keras cell", _RNN),
    Rule(
        "contrib", "tf.contrib.*",
        ("tf.contrib.", "tf.contrib"),
        "`{symbol}` fails on TF 2.21: tf.contrib was removed in TF 2.0",
        "tf.contrib was never part of TF2; tf_upgrade_v2 renames only the few symbols that moved "
        "into core TensorFlow",
        "a core TensorFlow or Keras equivalent", _CONTRIB),
    Rule(
        "variables", "variable_scope / get_variable / collections",
        (V1 + "variable_scope", V1 + "get_variable", V1 + "get_variable_scope",
         V1 + "get_local_variable", V1 + "AUTO_REUSE", V1 + "VariableScope",
         V1 + "make_template", V1 + "global_variables", V1 + "trainable_variables",
         V1 + "local_variables", V1 + "get_collection", V1 + "add_to_collection",
         V1 + "GraphKeys"),
        "`{symbol}` relies on TF1 graph-global state: in eager code it creates new variables on "
        "every call and inside a tf.function it fails",
        "TF2 has no global variable store or collections: variables belong to Python objects "
        "(tf.Module / keras.layers.Layer) and live as long as those objects",
        "variables as attributes of a tf.Module or weights of a keras.layers.Layer "
        "(self.add_weight in build); model.trainable_variables instead of collections",
        {"get_variable": "self.w = tf.Variable(initializer(shape)) in __init__ of a tf.Module, "
                         "or self.add_weight(...) in a Keras layer's build()",
         "variable_scope": "object attributes name the variables (tf.Module name scopes)",
         "AUTO_REUSE": "reuse is holding the object: call the same layer/module again",
         "make_template": "a tf.Module or keras.layers.Layer called several times",
         "trainable_variables": "model.trainable_variables / module.trainable_variables",
         "GraphKeys": "lists kept on the object (e.g. model.losses for regularization)",
         "get_collection": "model.losses / module.variables",
         "add_to_collection": "an attribute of the object (self.add_loss in Keras)"}),
    Rule(
        "session", "Session / placeholder / feed_dict / initializers / Saver",
        (V1 + "Session", V1 + "InteractiveSession", V1 + "placeholder",
         V1 + "placeholder_with_default", V1 + "sparse_placeholder",
         V1 + "global_variables_initializer", V1 + "local_variables_initializer",
         V1 + "variables_initializer", V1 + "initialize_all_variables",
         V1 + "tables_initializer", V1 + "disable_eager_execution", V1 + "disable_v2_behavior",
         V1 + "get_default_graph", V1 + "reset_default_graph", V1 + "train.Saver",
         V1 + "train.MonitoredTrainingSession", V1 + "train.MonitoredSession",
         V1 + "train.SingularMonitoredSession", V1 + "train.Scaffold",
         V1 + "summary.FileWriter", V1 + "summary.merge_all"),
        "`{symbol}` belongs to TF1 graph mode: under TF2's default eager execution it fails "
        "(placeholder, Saver without var_list, queue input) or does nothing useful",
        "TF2 runs operations at once; a graph is a tf.function traced from Python, called with "
        "arguments instead of fed through a Session",
        "eager calls or a @tf.function", _SESSION),
    Rule(
        "optimizer", "tf.compat.v1.train.*Optimizer",
        tuple(V1 + "train." + k for k in _OPTIMIZERS),
        "`{symbol}`.minimize(loss) needs a loss tensor of a TF1 graph; eagerly it raises "
        "'loss passed to Optimizer.compute_gradients should be a function'",
        "TF1 optimizers build update ops into the graph; TF2 computes gradients with "
        "tf.GradientTape and applies them with a Keras optimizer",
        "keras.optimizers.X with tf.GradientTape (optimizer.apply(grads, variables))",
        {k: f"keras.optimizers.{v} + tf.GradientTape; its slot variables have new names, so "
            f"TF1 optimizer state does not load" for k, v in _OPTIMIZERS.items()}),
    Rule(
        "control-flow", "tf.while_loop / tf.cond / tf.case",
        ("tf.while_loop", V1 + "while_loop", "tf.cond", V1 + "cond", "tf.case", V1 + "case",
         "tf.switch_case"),
        "`{symbol}` still runs on TF 2.21, but inside a tf.function it can be plain Python "
        "control flow",
        "AutoGraph turns `if`/`while`/`for` over tensors into tf.cond/tf.while_loop when a "
        "tf.function is traced, and runs them as Python when eager: easier to read and debug",
        "Python control flow inside a @tf.function",
        {"while_loop": "a Python `while` (or `for i in tf.range(n)`) inside a @tf.function; "
                       "shape_invariants go to tf.autograph.experimental.set_loop_options",
         "cond": "a Python `if`/`else` inside a @tf.function",
         "case": "if/elif inside a @tf.function", "switch_case": "if/elif inside a @tf.function"},
        action=ADVICE),
    Rule(
        "queues", "queue runners and readers",
        tuple(V1 + k for k in _QUEUES),
        "`{symbol}` fails under eager execution: queue-based input pipelines are not "
        "supported in TF2",
        "queue runners need a TF1 Session and its threads; tf.data replaces the whole pipeline",
        "a tf.data pipeline", _QUEUES),
    Rule(
        "estimator", "tf.estimator (removed in TF 2.16)",
        ("tf.estimator", V1 + "estimator", "tf.keras.estimator", V1 + "keras.estimator",
         "tensorflow_estimator"),
        "`{symbol}` fails on TF 2.21: tf.estimator was removed in TF 2.16",
        "TensorFlow dropped the Estimator API (and tf.compat.v1.estimator) in 2.16",
        "a keras.Model trained with model.fit (or tfprod.train.Trainer for distributed "
        "strategies) and exported with model.export / tfprod export",
        {"inputs.numpy_input_fn": "tf.data.Dataset.from_tensor_slices",
         "inputs.pandas_input_fn": "tf.data.Dataset.from_tensor_slices(dict(df))",
         "DNNClassifier": "a keras.Sequential of Dense layers with a softmax output",
         "DNNRegressor": "a keras.Sequential of Dense layers with a linear output",
         "LinearClassifier": "a keras Dense layer with a sigmoid/softmax output",
         "LinearRegressor": "a keras Dense layer", "RunConfig": "tf.distribute strategies",
         "TrainSpec": "model.fit(...)", "EvalSpec": "model.evaluate(...)",
         "train_and_evaluate": "model.fit(..., validation_data=...)",
         "export.ServingInputReceiver": "model.export(path) / tfprod export",
         "model_to_estimator": "the Keras model itself"}),
]}

#: Rule id of Keras names that do not exist in Keras 3 and of the safe Keras rewrites.
KERAS = "keras"
KERAS_WHY = ("under TF 2.21 tf.keras and tf.compat.v1.keras are Keras 3, which dropped the "
             "Keras 2 APIs that tf_keras still has")
TF_UPGRADE_V2 = "tf_upgrade_v2"


def rule_for(name: str) -> Rule | None:
    """The rule covering the dotted ``name`` (the most specific one), or None."""
    best, length = None, 0
    for rule in RULES.values():
        n = rule.matches(name)
        if n > length:
            best, length = rule, n
    return best
