"""A TF1 model run as TF1 ran it: feeds in, fetches out of a ``tf.compat.v1.Session``.

:func:`run_source` builds the model in its own ``tf.Graph`` (this process stays eager);
:func:`run_in_subprocess` does the same in a fresh Python process, ``python -m
tfprod.migrate.tf1_run SPEC.json``, so that graph code which changes global TensorFlow state
(``disable_eager_execution`` at import) cannot touch the caller. ``tfprod migrate check``
compares the migrated model against this.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

import numpy as np

from tfprod.errors import TfprodError
from tfprod.migrate.tf1_graph import (
    FROZEN,
    SAVEDMODEL,
    Tf1Source,
    build_checkpoint_graph,
    find_tensors,
    read_graph_def,
)


def run_source(source: Tf1Source, inputs: Mapping[str, str], outputs: Mapping[str, str],
               feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs the TF1 model in a Session: ``feeds`` (by input key) in, outputs by key out.

    Args:
        inputs: input key -> tensor name; outputs: output key -> tensor name.
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        if source.kind == SAVEDMODEL:
            tf.compat.v1.saved_model.loader.load(session, list(source.tags), source.path)
        elif source.kind == FROZEN:
            tf.compat.v1.import_graph_def(read_graph_def(source.path), name="")
        else:
            build_checkpoint_graph(source, session)
        where = source.describe()
        feed = dict(zip(find_tensors(graph, inputs.values(), "input", where),
                        (feeds[k] for k in inputs), strict=True))
        fetch = dict(zip(outputs, find_tensors(graph, outputs.values(), "output", where),
                         strict=True))
        return session.run(fetch, feed_dict=feed)


def run_in_subprocess(source: Tf1Source, inputs: Mapping[str, str], outputs: Mapping[str, str],
                      feeds: Mapping[str, np.ndarray], *, timeout: float = 600.0
                      ) -> dict[str, np.ndarray]:
    """:func:`run_source` in a fresh Python process (graph mode never touches the caller)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tfprod-tf1-") as tmp:
        feeds_path, out_path = os.path.join(tmp, "feeds.npz"), os.path.join(tmp, "out.npz")
        spec_path = os.path.join(tmp, "spec.json")
        np.savez(feeds_path, **feeds)
        with open(spec_path, "w") as f:
            json.dump({"source": source.to_json(), "inputs": dict(inputs),
                       "outputs": dict(outputs), "feeds": feeds_path, "out": out_path}, f)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        done = subprocess.run([sys.executable, "-m", "tfprod.migrate.tf1_run", spec_path],
                              capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=os.getcwd(), check=False)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
            error = next((ln[len("error: "):] for ln in reversed(lines)
                          if ln.startswith("error: ")), None)
            if error is not None:
                raise TfprodError(error)
            raise TfprodError(f"running {source.describe()} in a TF1 Session failed (exit "
                              f"{done.returncode}): {' | '.join(lines[-3:])}")
        with np.load(out_path, allow_pickle=False) as data:
            return {k: data[k] for k in outputs}


def main(argv: list[str]) -> int:
    from tfprod import runtime

    runtime.configure()
    with open(argv[0]) as f:
        spec = json.load(f)
    try:
        with np.load(spec["feeds"], allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
        out = run_source(Tf1Source.from_json(spec["source"]), spec["inputs"], spec["outputs"],
                         feeds)
    except TfprodError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    np.savez(spec["out"], **{k: np.asarray(v) for k, v in out.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
