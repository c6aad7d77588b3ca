"""TF Serving's gRPC API: PredictionService and ModelService on the official protos.

Clients built with ``tensorflow_serving.apis`` (``PredictionServiceStub``, ``ModelServiceStub``)
work unchanged: the same requests, responses, status codes and messages as
``tensorflow_model_server``. Every handler maps a :class:`~tfprod.serve.errors.ServingError` to
``context.abort(code, message)``; any other exception becomes INTERNAL (and is logged) without
affecting other requests. Inference requests are counted in the server's metrics with TF
Serving's API labels (``Predict``, ``Classify``, ``Regress``) and entrypoint ``GRPC``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfprod.serve.config import ModelSpec, specs_from_proto
from tfprod.serve.errors import (
    ServingError,
    failed_precondition,
    internal,
    invalid_argument,
    unimplemented,
)
from tfprod.serve.examples import classification_result, examples_from_input, regression_result
from tfprod.serve.hooks import request_id
from tfprod.serve.tensors import from_ndarray, to_ndarray

if TYPE_CHECKING:
    from tfprod.serve.registry import ModelRegistry

log = logging.getLogger("tfprod.serve")

_EXAMPLE_APIS = {
    "classify": (classification_pb2.ClassificationResponse, classification_result),
    "regress": (regression_pb2.RegressionResponse, regression_result),
}

SIGNATURE_DEF = "signature_def"
DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
ENTRYPOINT = "GRPC"
_NO_DEADLINE = 1e8  # seconds; grpc reports a huge time_remaining when the client set none


def _deadline(context: Any) -> float | None:
    """The client's gRPC deadline as a ``time.monotonic()`` instant (None without one)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > _NO_DEADLINE:
        return None
    return time.monotonic() + max(remaining, 0.0)


def _route(spec: Any) -> tuple[str, int | None, str | None]:
    """(name, version, label) of a ModelSpec: TF Serving's version_choice oneof."""
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _fill_spec(target: Any, name: str, version: int, signature: str | None = None) -> None:
    target.name = name
    target.version.value = version
    if signature is not None:
        target.signature_name = signature


def _require_spec(request: Any) -> None:
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")


class _Handler:
    """Runs one RPC: errors to status codes, INTERNAL for the unexpected, metrics."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def run(self, api: str | None, request: Any, context: Any,
            fn: Callable[[Any, Any], Any]) -> Any:
        start = time.perf_counter()
        response, error = None, None
        try:
            response = fn(request, context)
        except ServingError as e:
            error = e
        except Exception as e:  # never let one request take the server down
            log.exception("gRPC %s failed", api or type(request).__name__)
            error = internal(f"{type(e).__name__}: {e}")
        if api is not None:
            self._record(api, request, error, time.perf_counter() - start)
        if error is not None:
            context.abort(error.code, error.message)
        return response

    def _record(self, api: str, request: Any, error: ServingError | None,
                seconds: float) -> None:
        metrics = getattr(self.registry, "metrics", None)
        if metrics is None:
            return
        status = "OK" if error is None else error.code.name
        try:
            metrics.record_request(request.model_spec.name, api, ENTRYPOINT, status, seconds)
        except Exception:  # metrics must never fail a request
            log.exception("recording gRPC metrics failed")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``: Predict, Classify, Regress, MultiInference
    (several classify / regress signatures of one model on the same examples) and
    GetModelMetadata."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self._handler = _Handler(registry)

    # ------------------------------------------------------------------------ RPCs

    def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        return self._handler.run("Predict", request, context, self._predict)

    def Classify(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._handler.run("Classify", request, context, self._classify)

    def Regress(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._handler.run("Regress", request, context, self._regress)

    def GetModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._handler.run(None, request, context, self._metadata)

    def MultiInference(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._handler.run(None, request, context, self._multi_inference)

    # ------------------------------------------------------------------------ implementations

    def _predict(self, request: Any, context: Any) -> Any:
        name, version, label = _route(request.model_spec)
        deadline = _deadline(context)
        batcher = self.registry.batcher
        batcher.expect()  # a batch waiting for more requests waits for this one
        expected = True
        metadata = dict(context.invocation_metadata() or ())
        begun = time.perf_counter()
        split = None  # the servable, when a canary or A/B split chose it
        status = "OK"
        try:
            # A client's own request id keeps it on one side of a canary or A/B split.
            with self.registry.acquire(name, version, label,
                                       metadata.get("x-request-id")) as servable:
                if servable.arm is not None and version is None and label is None:
                    split = servable
                sig = _signature(servable, request.model_spec.signature_name, "predict")
                inputs = _decode_inputs(request.inputs, sig)
                wanted = _output_filter(request.output_filter, sig)
                expected = False  # submit ends the announcement, even when it raises
                start = time.perf_counter()
                outputs = servable.submit(sig.name, inputs, deadline=deadline,
                                          expected=True).result()
                served = servable.version
                hooks = getattr(self.registry, "hooks", None)
                if hooks is not None:  # the request log: queues and returns
                    rid = request_id(metadata.get("x-request-id"))
                    context.set_trailing_metadata((("x-request-id", rid),))
                    hooks.on_predict(name, served, sig.name, inputs, outputs,
                                     time.perf_counter() - start, rid)
                    if version is None and label is None:  # REST's shadow path, shared
                        self.registry.copy_to_shadow(servable, sig.name, inputs, rid, hooks)
            response = predict_pb2.PredictResponse()
            _fill_spec(response.model_spec, name, served, sig.name)
            for key in wanted or outputs:
                from_ndarray(outputs[key], response.outputs[key])
        except ServingError as e:
            status = e.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            if expected:
                batcher.unexpect()
            if split is not None:  # per-arm count, errors and latency of the split
                self.registry.record_arm(split, status, time.perf_counter() - begun)
        # A completed predict request: model, served version, signature, inputs, outputs (the
        # latency is measured around this call, in _Handler.run).
        return response

    def _classify(self, request: Any, context: Any) -> Any:
        return self._run_examples(request, context, "classify")

    def _regress(self, request: Any, context: Any) -> Any:
        return self._run_examples(request, context, "regress")

    def _run_examples(self, request: Any, context: Any, method: str) -> Any:
        """Run a classify / regress signature on the request's examples; build its response."""
        response_type, build = _EXAMPLE_APIS[method]
        name, version, label = _route(request.model_spec)
        deadline = _deadline(context)
        examples = examples_from_input(request.input)
        response = response_type()
        key = dict(context.invocation_metadata() or ()).get("x-request-id")
        begun = time.perf_counter()
        split, status = None, "OK"
        try:
            with self.registry.acquire(name, version, label, key) as servable:
                if servable.arm is not None and version is None and label is None:
                    split = servable
                sig = _signature(servable, request.model_spec.signature_name, method)
                outputs = servable.classify_or_regress(sig.name, examples, method,
                                                       deadline=deadline)
                _fill_spec(response.model_spec, name, servable.version, sig.name)
            build(outputs, len(examples), response.result)
        except ServingError as e:
            status = e.code.name
            raise
        except Exception:
            status = "INTERNAL"
            raise
        finally:
            if split is not None:
                self.registry.record_arm(split, status, time.perf_counter() - begun)
        return response

    def _multi_inference(self, request: Any, context: Any) -> Any:
        """Each task's classify or regress signature on the request's one input, with TF
        Serving's checks (tensorflow_serving/servables/tensorflow/multi_inference.cc): one
        model for all tasks, each signature once, only classify and regress methods."""
        if not request.tasks:
            raise invalid_argument("MultiInferenceRequest has no tasks; add one InferenceTask "
                                   "(model_spec, method_name) per classify or regress signature")
        model, seen, methods = "", set(), []
        for task in request.tasks:
            if not task.model_spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            if model and task.model_spec.name != model:
                raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access "
                                       "the same model name.")
            model = task.model_spec.name
            signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
            if signature in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {signature}")
            seen.add(signature)
            method = {CLASSIFY_METHOD: "classify", REGRESS_METHOD: "regress"}.get(
                task.method_name)
            if method is None:
                raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
            methods.append((signature, method))
        name, version, label = _route(request.tasks[0].model_spec)
        deadline = _deadline(context)
        examples = examples_from_input(request.input)
        response = inference_pb2.MultiInferenceResponse()
        with self.registry.acquire(name, version, label) as servable:
            for signature, method in methods:
                if signature not in servable.signatures:
                    raise invalid_argument(
                        f"Requested signature not found in model graph: {signature}")
                sig = servable.signatures[signature]
                outputs = servable.classify_or_regress(sig.name, examples, method,
                                                       deadline=deadline)
                result = response.results.add()
                _fill_spec(result.model_spec, name, servable.version, sig.name)
                target = (result.classification_result if method == "classify"
                          else result.regression_result)
                _EXAMPLE_APIS[method][1](outputs, len(examples), target)
        return response

    def _metadata(self, request: Any, context: Any) -> Any:
        _require_spec(request)
        if not request.metadata_field:
            raise invalid_argument("GetModelMetadataRequest must specify at least one "
                                   "metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise invalid_argument(f"Metadata field {field} is not supported; the only "
                                       f"metadata field is {SIGNATURE_DEF!r}")
        name, version, label = _route(request.model_spec)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        with self.registry.acquire(name, version, label) as servable:
            for key, sigdef in servable.signature_defs.items():
                signature_map.signature_def[key].CopyFrom(sigdef)
            served = servable.version
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _fill_spec(response.model_spec, name, served)
        response.metadata[SIGNATURE_DEF].Pack(signature_map)
        return response


def _signature(servable: Any, name: str, method: str) -> Any:
    """The requested signature; an unknown one fails with the code and text TF Serving's gRPC
    API uses (FAILED_PRECONDITION for Predict, INVALID_ARGUMENT for Classify / Regress)."""
    key = name or DEFAULT_SIGNATURE
    if key in servable.signatures:
        return servable.signatures[key]
    if method == "predict":
        raise failed_precondition(f'Serving signature key "{key}" not found.')
    raise invalid_argument(f"No signature was found with the name: {key}")


def _decode_inputs(inputs: Any, sig: Any) -> dict[str, Any]:
    """Request tensors -> numpy. Dtypes must equal the signature's (as in TF Serving, where the
    session rejects any other); when the names differ the servable reports that mismatch."""
    check = set(inputs.keys()) == set(sig.inputs)
    return {key: to_ndarray(proto, key, signature=sig.name,
                            expected=sig.inputs[key].dtype.as_datatype_enum if check else None)
            for key, proto in inputs.items()}


def _output_filter(names: Any, sig: Any) -> list[str]:
    """The requested output aliases, checked as TF Serving checks them."""
    seen: list[str] = []
    for alias in names:
        if alias not in sig.outputs:
            known = ",".join(sorted(sig.outputs))
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs "
                                   f"expected to be in the set {{{known}}}.")
        if alias in seen:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus and HandleReloadConfigRequest.

    Args:
        registry: the model registry.
        reload_config: applies a new model list (the server's reload, which also reconfigures
            what it polls); blocks until the new models are loaded.
    """

    def __init__(self, registry: ModelRegistry, reload_config: Callable[[list[ModelSpec]], None]):
        self.registry = registry
        self.reload_config = reload_config
        self._handler = _Handler(registry)

    def GetModelStatus(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._handler.run(None, request, context, self._status)

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._handler.run(None, request, context, self._reload)

    def _status(self, request: Any, context: Any) -> Any:
        _require_spec(request)
        name, version, label = _route(request.model_spec)
        if not name:
            raise invalid_argument("Missing model name in request.")
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in self.registry.status(name, version, label):
            entry = response.model_version_status.add()
            entry.version = status.version
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = grpc.StatusCode[status.error_code].value[0]
            entry.status.error_message = status.error_message
        return response

    def _reload(self, request: Any, context: Any) -> Any:
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid_argument("ServerModelConfig type not supported by "
                                   "HandleReloadConfigRequest. Only ModelConfigList is currently "
                                   "supported")
        self.reload_config(specs_from_proto(request.config))
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = grpc.StatusCode.OK.value[0]
        return response


def add_grpc_services(server: grpc.Server, registry: ModelRegistry, *,
                      reload_config: Callable[[list[ModelSpec]], None]) -> None:
    """Add TF Serving's PredictionService and ModelService to ``server``.

    Example::

        server = grpc.server(ThreadPoolExecutor(16),
                             options=[("grpc.max_send_message_length", -1),
                                      ("grpc.max_receive_message_length", -1)])
        add_grpc_services(server, registry, reload_config=registry.reload_config)
        server.add_insecure_port("0.0.0.0:8500")
        server.start()

    Args:
        server: a ``grpc.server`` (not started yet).
        registry: the :class:`~tfprod.serve.registry.ModelRegistry` requests are routed through.
        reload_config: what HandleReloadConfigRequest calls with the new ModelSpecs.
    """
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(registry, reload_config), server)

