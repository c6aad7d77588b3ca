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
                 "OnlineLoop", "online_status", "lower_priority"):
        assert name in o.__all__
    code = ("import sys, tfprod.online; from tfprod.online import two_proportion_test, "
            "PageHinkley, ReservoirBuffer, online_status; print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


STAGES = ("data", "train", "doctor", "export", "optimize", "serve", "monitor", "rl", "migrate",
          "online")


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_without_tensorflow(stage):
    """Every face follows the lazy rule (tfprod/lazy.py): its names load on first use."""
    import subprocess
    import sys

    code = (f"import sys, tfprod.{stage} as m; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, len(m.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tensorflow, keras, published = out.stdout.split()
    assert (tensorflow, keras) == ("False", "False")
    assert int(published) > 0


def test_models_is_the_one_face_that_imports_keras():
    """Importing tfprod.models registers its Keras classes, so .keras files using them load."""
    import keras

    import tfprod.models  # noqa: F401

    assert keras.saving.get_registered_object("tfprod>Target") is not None


def test_a_lazy_name_shared_with_its_module_stays_the_published_object(tmp_path, monkeypatch):
    """``tfprod.doctor.diagnose`` is a function in ``doctor/diagnose.py``: importing the module
    (directly, or through another module) must not replace the function on the package."""
    import importlib
    import types

    pkg = tmp_path / "lazyface"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from tfprod.lazy import lazy_exports\n"
        "__all__, __getattr__, __dir__ = lazy_exports(__name__, "
        "{'check': 'check', 'Other': 'other', 'not_found': 'tfprod.serve.errors'})\n")
    (pkg / "check.py").write_text("def check():\n    return 'checked'\n")
    (pkg / "other.py").write_text("class Other:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("lazyface.check")  # the module first, as a sibling module would
    face = importlib.import_module("lazyface")
    assert not isinstance(face.check, types.ModuleType) and face.check() == "checked"
    from lazyface import Other, check

    assert check() == "checked" and Other.__module__ == "lazyface.other"
    assert sorted(dir(face)) == ["Other", "check", "not_found"]
    from tfprod.serve.errors import not_found

    assert face.not_found is not_found  # a name re-published from another stage
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        face.nope  # noqa: B018
