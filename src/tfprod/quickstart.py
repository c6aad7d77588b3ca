"""The main job: sample data -> pipeline -> inspect -> doctor -> train -> save -> export ->
optimize -> serve -> monitor -> online.

Each stage returns plain data that the CLI prints as one compact table; later stages of the
lifecycle (monitor, online) add their step here.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from tfprod.errors import TfprodError

#: The variants the quickstart measures (``tfprod optimize`` builds more by default).
QUICK_VARIANTS = ("keras", "float32", "dynamic", "float16", "int8", "pruned80-int8")


@dataclasses.dataclass
class QuickstartResult:
    """What the quickstart made, and where."""

    out: str
    stages: list[dict[str, Any]]
    artifacts: dict[str, str]
    test_accuracy: float
    seconds: float
    optimize: Any = None  # the OptimizeReport of the variants
    serving: dict[str, Any] | None = None
    validation_accuracy: float | None = None  # of the epoch kept, on held-out training images
    best_epoch: int | None = None
    drift: list[dict[str, Any]] | None = None  # clean and shifted traffic vs the reference
    online: dict[str, Any] | None = None  # the online round: gate decision, canary verdict

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run(
    out: str | os.PathLike = "tfprod-quickstart",
    *,
    epochs: int = 8,
    image_size: int = 32,
    batch_size: int = 32,
    seed: int = 0,
    prune_epochs: int = 2,
    console=None,
    on_stage: Callable[[dict[str, Any]], None] | None = None,
) -> QuickstartResult:
    """Runs the quickstart into ``out`` (re-running replaces what it made before).

    Args:
        out: folder for the sample data, TensorBoard logs and the saved model.
        epochs: training epochs.
        image_size: side of the square sample images.
        batch_size: training batch size.
        seed: seeds Keras, TF and the data order.
        prune_epochs: fine-tuning epochs of the pruned variant in the optimize table.
        console: a rich console for the training progress bar.
        on_stage: called with each stage's summary row as it finishes.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from tfprod.data import image_folder, inspect_dataset, write_sample
    from tfprod.doctor import diagnose
    from tfprod.export import export_saved_model
    from tfprod.models import small_cnn
    from tfprod.monitor.model import penultimate
    from tfprod.online.loop import MODEL_FILE
    from tfprod.optimize.compare import optimize
    from tfprod.train import GradientStats, RichProgress, Trainer

    if epochs < 1:
        raise TfprodError(f"epochs={epochs}; expected at least 1")
    out = os.path.abspath(os.fspath(out))
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    stages: list[dict[str, Any]] = []

    def stage(name: str, t0: float, **details: Any) -> None:
        row = {"stage": name, "seconds": round(time.perf_counter() - t0, 2), **details}
        stages.append(row)
        if on_stage is not None:
            on_stage(row)

    t0 = time.perf_counter()
    data_dir = os.path.join(out, "data")
    paths = write_sample(data_dir, "png", image_size=image_size, overwrite=True)
    stage("sample data", t0, result=f"digits as PNG folders in {data_dir}")

    t0 = time.perf_counter()
    size = (image_size, image_size)
    # A hashed fifth of the training images is held out: the validation score of each epoch,
    # and the epoch whose weights are kept; the test images stay unseen until the end.
    train = image_folder(paths["train"], size, color_mode="grayscale", batch_size=batch_size,
                         seed=seed, validation_split=0.2, subset="training")
    val = image_folder(paths["train"], size, color_mode="grayscale", batch_size=256,
                       shuffle=False, validation_split=0.2, subset="validation")
    test = image_folder(paths["test"], size, color_mode="grayscale", batch_size=256,
                        shuffle=False)
    n_train, n_val, n_test = len(train.file_paths), len(val.file_paths), len(test.file_paths)
    stage("pipeline", t0, result=f"{n_train} train / {n_val} validation / {n_test} test "
          "images, parallel decode, cached, reshuffled, prefetched")

    t0 = time.perf_counter()
    report = inspect_dataset(train, class_names=train.class_names, source=paths["train"])
    notes = "; ".join(f.message for f in report.findings) or "no findings"
    stage("inspect", t0, result=f"{report.num_examples} examples, {len(report.class_counts)} "
          f"classes, {report.duplicates} duplicates; {notes} (the model below rescales "
          "inside: Rescaling(1/255))")

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = small_cnn((image_size, image_size, 1), len(train.class_names))
    checkup = diagnose(model, train)  # quick mode; the model comes back untouched
    doctor_path = os.path.join(out, "doctor.md")
    with open(doctor_path, "w") as f:
        f.write(checkup.to_markdown())
    first = checkup.findings[0].title if checkup.findings else "no findings"
    stage("doctor", t0, result=f"{len(checkup.passed)} checks passed, {len(checkup.errors)} "
          f"errors; {first} (tfprod.doctor, quick mode)")

    t0 = time.perf_counter()
    logdir = os.path.join(out, "logs", time.strftime("%Y%m%d-%H%M%S"))
    steps = int(tf.data.experimental.cardinality(train))
    sample = next(iter(train))
    trainer = Trainer(model)
    best = keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs,
                                         restore_best_weights=True)
    history = trainer.fit(
        train, epochs=epochs, validation_data=val,
        callbacks=[keras.callbacks.TensorBoard(logdir, histogram_freq=1),
                   GradientStats(sample, logdir),  # gradient histograms: Keras logs none
                   RichProgress(steps, console=console), best],
    )
    losses = history.history["loss"]
    validation_accuracy = float(history.history["val_accuracy"][best.best_epoch])
    stage("train", t0, result=f"{model.count_params():,} parameters, {epochs} epochs with "
          f"tfprod.train.Trainer, loss {losses[0]:.3f} -> {losses[-1]:.3f}, validation "
          f"accuracy {validation_accuracy:.4f} (best epoch {best.best_epoch + 1}, kept), "
          f"{trainer.steps_per_second:.0f} steps/s")

    t0 = time.perf_counter()
    model_path = os.path.join(out, "model.keras")
    model.save(model_path)
    restored = keras.saving.load_model(model_path)
    images = np.concatenate([x.numpy() for x, _ in test])
    labels = np.concatenate([y.numpy() for _, y in test])
    probs = restored.predict(images, batch_size=256, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == labels))
    stage("save + evaluate", t0, result=f"test accuracy {accuracy:.4f} from the reloaded "
          f"{os.path.basename(model_path)}")

    t0 = time.perf_counter()
    base = os.path.join(out, "models", "digits")
    # The monitoring reference is held-out data: on its training data a model is more
    # confident than on anything new, which would read as prediction drift.
    # A random half (the test folder is read class by class): the other half is clean traffic.
    order = np.random.default_rng(seed).permutation(len(images))
    held, unseen = order[:len(images) // 2], order[len(images) // 2:]
    with open(model_path, "rb") as f:  # inside the version: the online loop continues it
        keras_bytes = f.read()
    for stale in ("2", "3"):  # versions an earlier run's online stage published
        shutil.rmtree(os.path.join(base, stale), ignore_errors=True)
    exported = export_saved_model(restored, base, version=1, overwrite=True,
                                  reference_data=(images[held], labels[held]),
                                  extra_endpoints={"embedding": penultimate(restored)},
                                  extra_files={MODEL_FILE: keras_bytes})
    stage("export", t0, result=f"SavedModel version {exported.version} in TF Serving's layout, "
          f"{exported.warmup_requests} warmup requests, an embedding endpoint, reference "
          f"statistics and sample of {exported.reference_examples} held-out examples")

    t0 = time.perf_counter()
    variants_dir = os.path.join(out, "variants")
    report = optimize(restored, train, (images, labels), out_dir=variants_dir,
                      variants=QUICK_VARIANTS, runs=100, prune_epochs=prune_epochs,
                      png=os.path.join(out, "variants.png"))
    picks = "; ".join(f"{r.target}: {r.variant or 'none'}" for r in report.recommendations)
    stage("optimize", t0, result=f"{len(report.results)} variants measured side by side; {picks}")

    t0 = time.perf_counter()
    request_log = os.path.join(out, "requests.db")
    if os.path.exists(request_log):
        os.remove(request_log)
    traffic = {"clean": images[unseen], "shifted": shift_images(images[unseen])}
    serving = serve_and_query(base, images, labels, log=os.path.join(out, "serve.log"),
                              request_log=request_log, traffic=traffic)
    stage("serve", t0, result=f"tfprod serve process (REST, batching, request log): accuracy "
          f"{serving['accuracy']:.4f}"
          f" over {serving['examples']} examples; 1-instance latency p50 "
          f"{serving['p50_ms']:.1f} ms, p99 {serving['p99_ms']:.1f} ms")

    t0 = time.perf_counter()
    html = os.path.join(out, "drift.html")
    drift = drift_of_traffic(exported.path, request_log, serving["windows"], html=html)
    verdicts = "; ".join(f"{d['traffic']}: {d['verdict']}" for d in drift)
    stage("monitor", t0, result=f"tfprod.monitor on the request log vs the reference: "
          f"{verdicts} (brightness +60, contrast x0.6; FDR 0.01)")

    t0 = time.perf_counter()
    online = online_round(base, shift_images(images[unseen]), labels[unseen], out=out)
    stage("online", t0, result=online["summary"])

    artifacts = {
        "sample data": data_dir,
        "doctor report": doctor_path,
        "TensorBoard logs": f"tensorboard --logdir {os.path.join(out, 'logs')}",
        "model (.keras)": f"{model_path}  (keras.saving.load_model)",
        "SavedModel": f"{exported.path}  (tfprod serve --model_name=digits "
                      f"--model_base_path={base})",
        "variants": f"{variants_dir}  (plot: {report.plot})",
        "server log": serving["log"],
        "request log": f"{request_log}  (tfprod monitor report --model_base_path={base} "
                       f"--log={request_log} --since=1h)",
        "drift report": html,
        "online loop": f"{online['state']}  (tfprod online status {base})",
    }
    return QuickstartResult(out, stages, artifacts, accuracy,
                            round(time.perf_counter() - start, 1), optimize=report,
                            serving=serving, validation_accuracy=validation_accuracy,
                            best_epoch=best.best_epoch + 1, drift=drift, online=online)


def online_round(base: str, images: Any, labels: Any, *, out: str) -> dict[str, Any]:
    """One round of ``tfprod.online`` against a running ``tfprod serve``: the shifted images
    are served with request ids and their labels sent as feedback; the loop learns them
    (replay), gates the candidate against version 1 on its held-out reference sample, and
    publishes it as the canary; half of the next labelled traffic goes to it, and the canary
    is promoted or rolled back on that traffic."""
    import httpx
    import numpy as np

    from tfprod.online import OnlineLoop
    from tfprod.online.rollout import write_models_config
    from tfprod.serve.process import ServerProcess

    pixels = np.round(np.asarray(images)).astype(np.uint8)
    half = len(pixels) // 2
    config, log = os.path.join(out, "models.config"), os.path.join(out, "online.db")
    state = os.path.join(out, "online")
    for stale in (log, config):
        if os.path.exists(stale):
            os.remove(stale)
    shutil.rmtree(state, ignore_errors=True)
    write_models_config(config, "digits", base, 1)
    flags = [f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=0.2",
             f"--request_log={log}", "--monitoring_interval_seconds=0",
             "--file_system_poll_wait_seconds=0", "--canary_percent=50"]

    def send(client: Any, part: slice, prefix: str) -> None:
        ids = []
        for i in range(part.start, part.stop):
            r = client.post("/v1/models/digits:predict", json={"instances": [
                pixels[i].tolist()]}, headers={"X-Request-Id": f"{prefix}-{i}"})
            r.raise_for_status()
            ids.append(f"{prefix}-{i}")
        client.post("/v1/models/digits:feedback", json={"feedback": [
            {"request_id": rid, "label": int(labels[int(rid.rsplit("-", 1)[1])])}
            for rid in ids]}).raise_for_status()

    with ServerProcess("digits", None, log=os.path.join(out, "online-serve.log"),
                       flags=flags) as server, httpx.Client(
            base_url=f"http://127.0.0.1:{server.rest_port}", timeout=30) as client:
        loop = OnlineLoop(base, base, model_config_file=config, log_url=log,
                          model_name="digits", state_dir=state, min_examples=half // 2,
                          canary_min_requests=max(half // 4, 1), margin=0.03)
        try:
            send(client, slice(0, half), "feedback")
            first = loop.step()
            decision = first.get("decision")
            gate = "no round (too few labels)" if decision is None else gate_summary(
                decision, first["window_accuracy"])
            verdict = {"action": "none"}
            if first["action"] == "canary":
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and client.get(
                        f"/v1/models/digits/versions/{first['version']}").status_code != 200:
                    time.sleep(0.2)
                time.sleep(0.5)  # the labels apply once the version is AVAILABLE
                send(client, slice(half, len(pixels)), "canary")
                verdict = loop.step()
        finally:
            loop.close()
    if verdict["action"] in ("promote", "rollback"):
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.3f}"

        summary = (f"{gate}; canary v{first['version']} {fmt(verdict['canary_accuracy'])} vs "
                   f"stable {fmt(verdict['stable_accuracy'])} on live shifted traffic: "
                   f"{'promoted' if verdict['action'] == 'promote' else 'rolled back'}")
    else:
        summary = f"{gate}; {verdict.get('reason', 'no canary')}"
    return {"summary": summary, "round": first.get("action"), "verdict": verdict["action"],
            "state": state, "stable": loop.state["stable"]}


def gate_summary(decision: Any, window_accuracy: float) -> str:
    """The gate's decision in one line: the figures of each check, and which refused."""
    recent = "" if decision.recent_candidate is None else (
        f"; recent window {decision.recent_candidate:.3f} vs {decision.recent_baseline:.3f} "
        f"on {decision.recent_examples} examples, p={decision.recent_p:.2g}")
    line = (f"gate {'blessed' if decision.blessed else 'refused'} (holdout "
            f"{decision.candidate:.3f} vs v{decision.baseline_version} {decision.baseline:.3f}"
            f"{recent}; prequential window {window_accuracy:.3f})")
    return line if decision.blessed else f"{line}: {'; '.join(decision.reasons)}"


def shift_images(images: Any, *, brightness: float = 60.0, contrast: float = 0.6) -> Any:
    """A copy as a different camera would see it: contrast scaled, brightness raised."""
    import numpy as np

    return np.clip(np.asarray(images, np.float32) * contrast + brightness, 0, 255)


def drift_of_traffic(version_dir: str, request_log: str, windows: dict[str, tuple[float, float]],
                     *, html: str) -> list[dict[str, Any]]:
    """Each window of the request log against the version's reference sample (with the
    model's embeddings); writes the HTML report of the last window."""
    from tfprod.monitor import detect_drift, load_dataset, render_html
    from tfprod.monitor.model import ExportedModel
    from tfprod.monitor.store import open_store, records_to_dataset

    model = ExportedModel(version_dir)
    reference = load_dataset(version_dir)  # with the embeddings the export kept
    store = open_store(request_log, create=False)
    rows = []
    try:
        for name, (since, until) in windows.items():
            current = records_to_dataset(store.read("digits", since=since, until=until))
            current.source = f"{name} traffic"
            current.embeddings = model.embeddings(current.features)
            report = detect_drift(reference, current, fdr=0.01)  # a demo: 1% false alarms
            perf = report.performance
            rows.append({
                "traffic": name, "rows": report.current_rows,
                "drifted": ", ".join(report.drifted) or "-",
                "joint": f"{report.multivariate['test']} p={report.multivariate['p_adjusted']:.3g}",
                # the digits model has one output: name its drifted statistics only, so the
                # table fits 80 columns ("probabilities:confidence" -> "confidence")
                "predictions": ", ".join(k.rpartition(":")[2] for k, v
                                         in report.prediction_drift.items() if v["drift"]) or "-",
                "estimated_accuracy": f"{perf['estimated_accuracy']:.3f} +- "
                                      f"{perf['estimated_accuracy_error']:.3f}"
                if "estimated_accuracy" in perf else "-",
                "verdict": "DRIFT" if report.exit_status else "no drift"})
            with open(html, "w", encoding="utf-8") as f:
                f.write(render_html(report, title=f"digits: {name} traffic vs the reference"))
    finally:
        store.close()
    return rows


def serve_and_query(base: str, images: Any, labels: Any, *, log: str,
                    latency_requests: int = 100, batch: int = 64, request_log: str | None = None,
                    traffic: dict[str, Any] | None = None) -> dict[str, Any]:
    """Starts ``tfprod serve --enable_batching`` on ``base`` as its own process on free loopback
    ports and queries it over REST: every image in ``batch``-row requests (accuracy), then
    ``latency_requests`` one-instance requests one after another (latency), then each set of
    ``traffic`` images (name -> images) in turn, whose time windows it returns (``windows``);
    then stops it. With ``request_log``, the server logs every request there."""
    import numpy as np

    from tfprod.serve.client import RestClient
    from tfprod.serve.process import ServerProcess

    pixels = np.asarray(images).astype(np.uint8)  # whole numbers in JSON: a third of the bytes
    flags = ["--enable_batching", "--file_system_poll_wait_seconds=0"]
    if request_log:
        flags += [f"--request_log={request_log}", "--monitoring_interval_seconds=0"]
    windows = {}
    with ServerProcess("digits", base, log=log, flags=flags
                       ) as server, RestClient("127.0.0.1", server.rest_port) as client:
        predicted = np.concatenate([client.predict("digits", pixels[i:i + batch])
                                    for i in range(0, len(pixels), batch)])
        times = []
        for i in range(latency_requests):
            t = time.perf_counter()
            client.predict("digits", pixels[i % len(pixels)][None])
            times.append(1000 * (time.perf_counter() - t))
        for name, sent in (traffic or {}).items():
            sent = np.round(np.asarray(sent)).astype(np.uint8)
            since = time.time()
            for i in range(0, len(sent), batch):
                client.predict("digits", sent[i:i + batch])
            windows[name] = (since, time.time())
    return {"windows": windows, "request_log": request_log,"examples": len(pixels),
            "accuracy": float(np.mean(np.argmax(predicted, axis=1) == labels)),
            "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "latency_requests": latency_requests, "rest_port": server.rest_port, "log": log}
