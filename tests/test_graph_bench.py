"""`tfprod bench graph`: the same computation as a TF1 graph, eagerly, as a tf.function, XLA."""

import numpy as np
import pytest


@pytest.mark.parametrize("workload", ["mlp", "rnn"])
def test_every_mode_computes_the_same_thing(workload):
    """Equivalence: after the same steps from the same weights, every mode agrees."""
    from tfprod.migrate.graph_bench import MODES, make_modes, make_problem

    problem = make_problem(workload, batch=8, hidden=16, time_steps=6)
    modes = make_modes(problem, list(MODES))
    try:
        values = {m.name: m.run(4) for m in modes}  # 4 SGD steps, or 4 forward passes
    finally:
        for m in modes:
            m.close()
    reference = values["session"]
    assert np.all(np.isfinite(reference))
    for name, value in values.items():
        np.testing.assert_allclose(value, reference, atol=1e-5, err_msg=name)
    if workload == "mlp":  # and the TF1 graph really trained: its loss moved
        first = make_modes(problem, ["eager"])[0].run(1)
        assert abs(float(reference) - float(first)) > 1e-4


def test_bench_reports_each_mode_against_the_tf1_session():
    from tfprod.migrate.graph_bench import bench_graph, make_problem

    report = bench_graph(make_problem("mlp", batch=4, hidden=8), steps=3, repeats=2,
                         modes=["session", "eager", "function"], warmup=1)
    assert list(report.rates) == ["session", "eager", "function"]
    assert all(len(r) == 2 and min(r) > 0 for r in report.rates.values())
    rows = report.rows()
    assert rows[0][0] == "TF1 graph, Session.run + feed_dict" and rows[0][-1] == "1.00x"
    assert report.baseline == "session" and "training step, batch 4" in report.title
    assert set(report.to_json()["median_steps_per_s"]) == {"session", "eager", "function"}


def test_bad_arguments_are_clear():
    from tfprod.errors import TfprodError
    from tfprod.migrate.graph_bench import make_modes, make_problem

    with pytest.raises(TfprodError, match="workload 'cnn'; expected one of mlp, rnn"):
        make_problem("cnn")
    with pytest.raises(TfprodError, match="batch=0"):
        make_problem("mlp", batch=0)
    with pytest.raises(TfprodError, match="expected a subset of"):
        make_modes(make_problem("mlp", batch=2, hidden=2), ["jit"])


def test_the_cli_knows_every_mode():
    from tfprod.commands.migrate import _MODES
    from tfprod.migrate.graph_bench import MODES

    assert tuple(MODES) == _MODES
