"""Writes the TF1 models of the migrate tests, with TF1 behavior (reference variables, v1
control flow), as TF 1.x would have: run as ``python make_tf1_models.py OUT``.

OUT/
  mlp_savedmodel/     simple_save, signature serving_default: x -> probs, logits
  mlp_ckpt/           Saver checkpoint (+ .meta) of the same trained weights
  mlp_frozen.pb       the same graph frozen (variables -> constants)
  mlp_other.pb        the MLP frozen with other weights (a check must fail against it)
  loop_savedmodel/    SavedModelBuilder, one signature "loop" (no serving_default): x -> state
  loop_frozen.pb      the while_loop graph frozen
  reference.npz       x and every model's TF1 outputs on it
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tf1_graphs import FEATURES, loop_graph, mlp_graph  # noqa: E402

v1 = tf.compat.v1


def freeze(session, graph, outputs, path):
    frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(),
                                                          outputs)
    tf.io.write_graph(frozen, os.path.dirname(path), os.path.basename(path), as_text=False)


def main(out):
    v1.disable_v2_behavior()
    rng = np.random.default_rng(0)
    x_value = rng.standard_normal((16, FEATURES)).astype(np.float32)
    reference = {"x": x_value}

    for name, steps in (("mlp", 20), ("mlp_other", 3)):
        graph = tf.Graph()
        with graph.as_default():
            outs = mlp_graph()
            x = graph.get_tensor_by_name("x:0")
            labels = v1.placeholder(tf.int64, [None], name="labels")
            loss = v1.losses.sparse_softmax_cross_entropy(labels, outs["logits"])
            train = v1.train.AdamOptimizer(0.05).minimize(
                loss, global_step=v1.train.get_or_create_global_step())
            with v1.Session(graph=graph) as sess:
                sess.run(v1.global_variables_initializer())
                y = rng.integers(0, 3, 64)
                xs = rng.standard_normal((64, FEATURES)).astype(np.float32)
                for _ in range(steps):
                    sess.run(train, {x: xs, labels: y})
                values = sess.run(outs, {x: x_value})
                if name == "mlp":
                    v1.saved_model.simple_save(sess, os.path.join(out, "mlp_savedmodel"),
                                               {"x": x}, outs)
                    v1.train.Saver().save(sess, os.path.join(out, "mlp_ckpt", "model.ckpt"),
                                          global_step=steps)
                    freeze(sess, graph, ["probs", "mlp/logits"], os.path.join(out, "mlp_frozen.pb"))
                else:
                    freeze(sess, graph, ["probs", "mlp/logits"], os.path.join(out, "mlp_other.pb"))
        reference.update({f"{name}/{k}": v for k, v in values.items()})

    graph = tf.Graph()
    with graph.as_default():
        outs = loop_graph()
        x = graph.get_tensor_by_name("x:0")
        with v1.Session(graph=graph) as sess:
            sess.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(os.path.join(out, "loop_savedmodel"))
            signature = v1.saved_model.predict_signature_def({"x": x}, outs)
            builder.add_meta_graph_and_variables(sess, ["serve"], {"loop": signature})
            builder.save()
            freeze(sess, graph, ["state"], os.path.join(out, "loop_frozen.pb"))
            reference["loop/state"] = sess.run(outs["state"], {x: x_value})
    np.savez(os.path.join(out, "reference.npz"), **reference)


if __name__ == "__main__":
    main(sys.argv[1])
