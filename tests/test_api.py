"""The published API surface: every name in ``__all__`` exists."""

import importlib

import pytest


@pytest.mark.parametrize("module", ["tfprod", "tfprod.data", "tfprod.models", "tfprod.train",
                                    "tfprod.doctor", "tfprod.export", "tfprod.optimize",
                                    "tfprod.serve", "tfprod.monitor", "tfprod.online",
                                    "tfprod.rl", "tfprod.migrate"])
def test_all_names_exist(module):
    mod = importlib.import_module(module)
    assert mod.__all__, f"{module} publishes nothing"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing


def test_data_surface_has_the_pipeline_entry_points():
    import tfprod.data as d

    for name in ("write_tfrecords", "read_tfrecords", "image_folder", "inspect_dataset",
                 "inspect_path", "write_sample"):
        assert name in d.__all__


def test_serve_and_optimize_packages_load_names_lazily():
    import subprocess
    import sys

    code = ("import sys, tfprod.serve, tfprod.optimize, tfprod.rl, tfprod.migrate; "
            "from tfprod.rl import DQNConfig, preset; "
            "from tfprod.serve import RestClient; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_models_surface_has_the_model_building_scenarios():
    import tfprod.data as d
    import tfprod.export as e
    import tfprod.models as m

    for name in ("UserItemEmbedding", "Recommender", "train_recommender", "evaluate_ranking",
                 "sequence_classifier", "compare_batching", "SubclassedClassifier",
                 "capabilities"):
        assert name in m.__all__
    for name in ("synthetic_interactions", "read_movielens", "sequence_task"):
        assert name in d.__all__
    for name in ("RaggedInput", "export_recommender"):
        assert name in e.__all__


def test_own_data_surface():
    import tfprod.data as d
    import tfprod.models as m
    import tfprod.train as t

    assert {"LabelTask", "infer_task", "SplitInfo"} <= set(d.__all__)
    assert {"Target", "find_task", "task_head", "compile_for_task", "MacroF1",
            "ScaledMeanSquaredError"} <= set(m.__all__)
    assert {"TrainConfig", "TrainResult", "run_training", "training_inputs"} <= set(t.__all__)


def test_monitor_loads_without_tensorflow():
    import subprocess
    import sys

    code = ("import sys, tfprod.monitor; from tfprod.monitor import detect_drift, Profile; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_online_surface_and_lazy_import():
    import subprocess
    import sys

    import tfprod.online as o

    for name in ("LogStream", "FolderStream", "IterableStream", "ReservoirBuffer", "FineTune",
                 "Replay", "EWC", "LwF", "make_learner", "Prequential", "PageHinkley",
                 "evaluate_gate", "GateDecision", "two_proportion_test", "write_models_config",
                 "OnlineLoop", "online_status"):
        assert name in o.__all__
    code = ("import sys, tfprod.online; from tfprod.online import two_proportion_test, "
            "PageHinkley, ReservoirBuffer, online_status; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
