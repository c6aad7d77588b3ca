"""tfprod serve's configuration files: ModelServerConfig, BatchingParameters, MonitoringConfig."""

import grpc
import pytest

from tfprod.errors import TfprodError
from tfprod.serve.config import (
    BatchingParameters,
    ConfigError,
    ModelSpec,
    load_model_server_config,
    parse_batching_parameters,
    parse_model_server_config,
    parse_monitoring_config,
    specs_from_proto,
)
from tfprod.serve.errors import ServingError

MODELS = """
# two models, every policy kind
model_config_list {
  config {
    name: 'digits'
    base_path: '/models/digits'
    model_platform: 'tensorflow'
    model_version_policy { specific { versions: 3 versions: 1 } }
    version_labels { key: 'stable' value: 1 }
    version_labels { key: 'canary' value: 3 }
  }
  config { name: "latest2" base_path: "/m/l" model_version_policy { latest { num_versions: 2 } } }
  config { name: "every" base_path: "/m/a" model_version_policy { all {} } }
  config { name: "plain" base_path: "gs://bucket/plain" }
}
"""


def test_model_server_config_policies_and_labels():
    specs = parse_model_server_config(MODELS)
    assert specs == [
        ModelSpec("digits", "/models/digits", ("specific", (1, 3)), {"canary": 3, "stable": 1}),
        ModelSpec("latest2", "/m/l", ("latest", 2), {}),
        ModelSpec("every", "/m/a", ("all",), {}),
        ModelSpec("plain", "gs://bucket/plain", ("latest", 1), {}),
    ]


def test_model_config_file_resolves_relative_base_paths(tmp_path):
    path = tmp_path / "models.config"
    path.write_text('model_config_list { config { name: "m" base_path: "m" } }')
    assert load_model_server_config(path) == [ModelSpec("m", str(tmp_path / "m"))]


@pytest.mark.parametrize("text, line, fragment", [
    ('model_config_list {\n  config {\n    nme: "x"\n  }\n}', 3, 'no field named "nme"'),
    ('model_config_list {\n  config { name: "x" base_path: "/b"\n', 2, 'Expected "}"'),
    ('model_config_list { config { name: 5 } }', 1, "string"),
])
def test_model_server_config_syntax_errors_name_file_and_line(text, line, fragment):
    with pytest.raises(ConfigError) as e:
        parse_model_server_config(text, source="models.config")
    msg = str(e.value)
    assert msg.startswith(f"models.config:{line}: ") and fragment in msg
    assert "\n" not in msg and "expected" in msg


@pytest.mark.parametrize("text, fragment", [
    ('model_config_list { config { name: "../etc" base_path: "/b" } }', "'../etc' is not valid"),
    ('model_config_list { config { name: "x" } }', "no base_path"),
    ('model_config_list { config { name: "x" base_path: "/b" } config { name: "x" '
     'base_path: "/c" } }', "appears twice"),
    ('model_config_list { config { name: "x" base_path: "/b" model_platform: "pytorch" } }',
     "only 'tensorflow'"),
    ('model_config_list { config { name: "x" base_path: "/b" '
     'version_labels { key: "a/b" value: 1 } } }', "'a/b' is not valid"),
    ('model_config_list { config { name: "x" base_path: "/b" '
     'model_version_policy { specific { } } } }', "lists no versions"),
])
def test_model_server_config_semantic_errors(text, fragment):
    with pytest.raises(ConfigError) as e:
        parse_model_server_config(text)
    assert fragment in str(e.value)


def test_config_error_is_both_a_cli_error_and_invalid_argument():
    with pytest.raises(ConfigError) as e:
        ModelSpec("bad name", "/b")
    assert isinstance(e.value, TfprodError) and isinstance(e.value, ServingError)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and e.value.http_status == 400


def test_specs_from_reload_request_proto():
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    c = config.model_config_list.config.add(name="m", base_path="/b")
    c.model_version_policy.latest.num_versions = 3
    c.version_labels["prod"] = 7
    assert specs_from_proto(config) == [ModelSpec("m", "/b", ("latest", 3), {"prod": 7})]
    assert specs_from_proto(model_server_config_pb2.ModelServerConfig()) == []


BATCHING = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 2000 }   # 2 ms
max_enqueued_batches { value: 100 }
num_batch_threads { value: 3 }
allowed_batch_sizes: 16
allowed_batch_sizes: 32
allowed_batch_sizes: 64
pad_variable_length_inputs: true
thread_pool_name { value: "model_server_batch_threads" }
"""


def test_batching_parameters_in_tf_serving_syntax():
    p = parse_batching_parameters(BATCHING)
    assert p == BatchingParameters(max_batch_size=64, batch_timeout_micros=2000,
                                   num_batch_threads=3, max_enqueued_batches=100,
                                   allowed_batch_sizes=(16, 32, 64),
                                   pad_variable_length_inputs=True)
    assert p.max_pending == 6400
    assert parse_batching_parameters("allowed_batch_sizes: [8, 1000]").allowed_batch_sizes == (
        8, 1000)


def test_batching_defaults_are_tf_servings():
    p = parse_batching_parameters("")
    assert (p.max_batch_size, p.batch_timeout_micros, p.max_enqueued_batches) == (1000, 0, 10)
    assert p.num_batch_threads >= 1 and p.allowed_batch_sizes == ()
    assert not p.pad_variable_length_inputs


@pytest.mark.parametrize("text, fragment", [
    ("max_batch_size: 64", "b.cfg:1: "),                                 # wrapper type needed
    ("max_batch_size { value: 64 }\nbatch_size { value: 1 }", "b.cfg:2: "),  # unknown field
    ("num_batch_threads { value: 0 }", "num_batch_threads is 0"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2",
     "strictly increasing"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4", "must equal max_batch_size (8)"),
])
def test_batching_parameter_errors(text, fragment):
    with pytest.raises(ConfigError) as e:
        parse_batching_parameters(text, source="b.cfg")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_monitoring_config():
    on = parse_monitoring_config('prometheus_config { enable: true path: "/metrics/x" }')
    assert on.path == "/metrics/x"
    assert parse_monitoring_config("prometheus_config { enable: true }").path == (
        "/monitoring/prometheus/metrics")
    assert parse_monitoring_config("prometheus_config { enable: false }").path is None
    assert parse_monitoring_config("").path is None
    with pytest.raises(ConfigError, match=r"^m.cfg:1: .*expected prometheus_config"):
        parse_monitoring_config("prometheus { enable: true }", source="m.cfg")
    with pytest.raises(ConfigError, match="absolute URL path"):
        parse_monitoring_config('prometheus_config { enable: true path: "metrics" }')


def test_unreadable_file_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--model_config_file .*nope.config: cannot read it"):
        load_model_server_config(tmp_path / "nope.config")
