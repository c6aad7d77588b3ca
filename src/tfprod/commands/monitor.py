"""``tfprod monitor``: drift, validation and model quality, from files or a server's request log.

Exit status: 0 no drift, 1 drift or validation errors found (for cron and CI), 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tfprod.commands import group
from tfprod.console import console, err_console, table, tf, write_json, write_text


def _print(report: Any, title: str, html: Path | None, json_path: Path | None) -> None:
    from tfprod.monitor.html import render_html

    console.print(table(f"{title}: {len(report.drifted)} of {len(report.features)} features "
                        f"drifted (BH, FDR {report.fdr:g})", report.columns,
                        report.rows(limit=max(15, len(report.drifted) + 5))))
    if len(report.features) > max(15, len(report.drifted) + 5):
        console.print(f"[dim]... {len(report.features)} columns in all (--json / --html have "
                      "every one)[/]")
    if report.prediction_drift:
        console.print(table("predictions", ["output", "test", "score", "drift"], [
            [k, v["test"], f"{v['score']:.3f}", "DRIFT" if v["drift"] else "-"]
            for k, v in report.prediction_drift.items()]))
    if report.validation:
        issues = sorted(report.validation, key=lambda v: (v["severity"] != "error", -v["count"]))
        more = f", the first 10 of {len(issues)}" if len(issues) > 10 else ""
        console.print(table(f"validation{more}", ["feature", "check", "severity", "rows",
                                                  "examples"], [
            [v["feature"], v["check"], v["severity"], v["count"],
             ", ".join(map(str, v["examples"]))] for v in issues[:10]]))
    console.print(report.summary(), highlight=False, soft_wrap=True)
    write_text(html, render_html(report, title=title) if html else "")
    write_json(json_path, report.to_json())


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"7d"`` -> seconds."""
    from tfprod.errors import TfprodError

    unit = text[-1:].lower()
    try:
        value = float(text[:-1]) if unit in _UNITS else float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise TfprodError(f"--since {text!r}; expected a duration such as 90s, 30m, 1h or 7d")
    return value * _UNITS.get(unit, 1)


def register(app: typer.Typer) -> None:
    """Add ``tfprod monitor drift|profile|report|skew`` to the root app."""
    monitor = group(app, "monitor", "Drift, validation and model quality (tfprod.monitor).")

    @monitor.command("drift")
    def drift(
        reference: Path = typer.Argument(..., help="CSV, Parquet, .npy/.npz, TFRecord folder, "
                                         "exported version folder or .profile.npz."),
        current: Path = typer.Argument(..., help="The data to compare, same formats."),
        label: str | None = typer.Option(None, help="A column holding labels (not tested)."),
        fdr: float = typer.Option(0.05, help="False-discovery rate (Benjamini-Hochberg)."),
        multivariate: str = typer.Option("auto", help="auto|domain_classifier|mmd|none."),
        numeric_test: str = typer.Option("auto", help="auto|ks|wasserstein|psi."),
        categorical_test: str = typer.Option("auto", help="auto|chi2|jensen_shannon."),
        html: Path | None = typer.Option(None, help="Write the HTML report here."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the JSON here."),
    ) -> None:
        """Drift of CURRENT from REFERENCE: features, joint distribution, predictions, schema.

        Per-feature tests with Benjamini-Hochberg, a domain classifier (or MMD on the model's
        embeddings), and the model's predictions when REFERENCE is an exported version.

        Example: [bold]tfprod monitor drift models/digits/1 shifted.npz --html drift.html[/]
        """
        from tfprod.monitor import detect_drift, load_dataset
        from tfprod.monitor.model import version_folder

        ref = load_dataset(reference, label=label)
        cur = load_dataset(current, label=label)
        version = version_folder(reference)
        if version is not None:
            tf()
            from tfprod.monitor.model import ExportedModel, with_model_outputs

            with_model_outputs(ExportedModel(version), ref, cur)
        report = detect_drift(ref, cur, fdr=fdr, multivariate=multivariate,
                              numeric_test=numeric_test, categorical_test=categorical_test)
        _print(report, f"{current} vs {reference}", html, json_path)
        raise typer.Exit(report.exit_status)

    @monitor.command("report")
    def report(
        model_base_path: Path = typer.Option(..., "--model_base_path",
                                             help="The model's folder of versions."),
        log: str = typer.Option(..., help="The request log: SQLite path or postgresql:// URL."),
        model_name: str | None = typer.Option(None, "--model_name",
                                              help="Default: the base path's folder name."),
        since: str = typer.Option("1h", help="The window: requests newer than this (90s, "
                                  "30m, 1h, 7d)."),
        fdr: float = typer.Option(0.05, help="False-discovery rate (Benjamini-Hochberg)."),
        html: Path | None = typer.Option(None, help="Write the HTML report here."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the JSON here."),
    ) -> None:
        """Drift, validation and accuracy of a window of the request log.

        Compared with the reference sample of the model's newest version; accuracy from the
        labels sent to :feedback where they arrived, estimated from confidence where not.

        Example: [bold]tfprod monitor report --model_base_path models/digits --log
        requests.db --since 1h --html report.html[/]
        """
        import time

        from tfprod.errors import TfprodError
        from tfprod.monitor import detect_drift, load_dataset
        from tfprod.monitor.model import version_folder
        from tfprod.monitor.store import open_store, records_to_dataset, redact

        name = model_name or model_base_path.resolve().name
        window = parse_since(since)
        store = open_store(log, create=False)
        try:
            records = store.read(name, since=time.time() - window)
        finally:
            store.close()
        if not records:
            raise TfprodError(f"{redact(log)}: no logged requests of model {name!r} in the last "
                              f"{since}; widen --since or check --log and --model_name")
        version = version_folder(model_base_path)
        if version is None:
            raise TfprodError(f"{model_base_path}: no exported version there; give the folder "
                              "of numbered versions the server serves")
        ref = load_dataset(version)
        cur = records_to_dataset(records)
        cur.source = f"{redact(log)} ({len(records)} requests, last {since})"
        tf()
        from tfprod.monitor.model import ExportedModel

        exported = ExportedModel(version)
        if exported.has_embedding:
            if ref.embeddings is None:  # exported before the sample kept its embeddings
                ref.embeddings = exported.embeddings(ref.features)
            cur.embeddings = exported.embeddings(cur.features)
        result = detect_drift(ref, cur, fdr=fdr)
        _print(result, f"model {name}, last {since} ({cur.rows} rows) vs version "
               f"{Path(version).name}", html, json_path)
        raise typer.Exit(result.exit_status)

    @monitor.command("skew")
    def skew(
        training: Path = typer.Argument(..., help="What training saw: CSV, Parquet, .npy/.npz, "
                                        "TFRecord folder, exported version folder."),
        serving: str = typer.Argument(..., help="What serving saw: the same formats, or a "
                                      "request log (.db path, sqlite:///, postgresql://)."),
        label: str | None = typer.Option(None, help="A column holding labels (not compared)."),
        model_name: str | None = typer.Option(None, "--model_name",
                                              help="The logged model (request logs)."),
        since: str | None = typer.Option(None, help="Logged requests newer than this (90s, "
                                         "30m, 1h, 7d); default: all."),
        keras_model: Path | None = typer.Option(
            None, "--keras", help="The training pipeline's model (.keras): compare its "
            "predictions with the served ones on the same examples."),
        model: Path | None = typer.Option(
            None, help="The exported version that serves (when SERVING has no outputs)."),
        rows: int = typer.Option(2000, help="Examples run through both paths, at most."),
        l_infinity: float = typer.Option(0.1, "--l-infinity",
                                         help="Threshold of categorical features."),
        jensen_shannon: float = typer.Option(0.1, "--jensen-shannon",
                                             help="Threshold of numeric features."),
        atol: float = typer.Option(1e-4, help="Largest prediction difference that is not skew."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the JSON here."),
    ) -> None:
        """Training/serving skew: the data each path saw, and the same examples through both.

        Per feature, L-infinity distance of category frequencies and Jensen-Shannon distance of
        binned values (TFDV's skew comparator); with --keras, the training pipeline's
        predictions vs the served ones on the same examples. Exit status 1 on skew.

        Example: [bold]tfprod monitor skew train.csv requests.db --keras model.keras[/]
        """
        from tfprod.errors import TfprodError
        from tfprod.monitor import load_dataset, skew_report

        for name, value in (("--l-infinity", l_infinity), ("--jensen-shannon", jensen_shannon)):
            if not 0 < value <= 1:
                raise TfprodError(f"{name} {value:g}; expected a distance in (0, 1]")
        if rows < 1 or atol < 0:
            raise TfprodError(f"--rows {rows}, --atol {atol:g}; expected --rows >= 1 and "
                              "--atol >= 0")
        train = load_dataset(training, label=label)
        served = _served(serving, label, model_name, since)
        served_outputs = training_outputs = None
        if keras_model is not None:
            n = min(rows, served.rows)
            inputs = {k: v[:n] for k, v in served.features.items()}
            if served.predictions:
                served_outputs = {k: v[:n] for k, v in served.predictions.items()}
            elif model is not None:
                tf()
                from tfprod.monitor.model import SERVING_DEFAULT, ExportedModel, version_folder

                version = version_folder(model)
                if version is None:
                    raise TfprodError(f"--model {model}: no exported version there; give a "
                                      "version folder or its base path")
                served_outputs = ExportedModel(version).run(SERVING_DEFAULT, inputs)
            else:
                raise TfprodError(f"{serving}: no served outputs to compare with --keras; give "
                                  "a request log or an exported version, or --model VERSION "
                                  "to run the served model")
            training_outputs = _keras_outputs(keras_model, inputs, served_outputs)
        report = skew_report(train.features, served.features,
                             served_predictions=served_outputs,
                             training_predictions=training_outputs, l_infinity=l_infinity,
                             jensen_shannon=jensen_shannon, atol=atol)
        report.sources = {"training": str(training), "serving": served.source}
        console.print(table(f"{served.source} ({report.serving_rows:,} rows) vs {training} "
                            f"({report.training_rows:,} rows): {len(report.skewed)} of "
                            f"{len(report.features)} features skewed",
                            ["feature", "measure", "score", "threshold", "skew"],
                            report.rows(limit=max(15, len(report.skewed) + 5))))
        if report.predictions is not None:
            console.print(table("the same examples: served vs training pipeline",
                                ["output", "max |diff|", "class flips", "skew"], [
                [k, f"{v['max_abs_diff']:.3g}",
                 f"{v['class_flips']:.2%}" if "class_flips" in v else "-",
                 "SKEW" if v["skew"] else "-"] for k, v in report.predictions.items()]))
        console.print(report.summary(), highlight=False, soft_wrap=True)
        write_json(json_path, report.to_json())
        raise typer.Exit(report.exit_status)

    @monitor.command("profile")
    def profile(
        data: Path = typer.Argument(..., help="CSV, Parquet, .npy/.npz or TFRecord folder."),
        out: Path = typer.Option(..., help="The .profile.npz to write."),
        merge: list[Path] = typer.Option([], help="Profiles to merge into it (repeatable)."),
        capacity: int = typer.Option(10_000, help="Rows kept in the sample."),
    ) -> None:
        """Profile DATA: exact mergeable summaries and a bounded row sample.

        Example: [bold]tfprod monitor profile shard0.csv --out all.profile.npz --merge
        shard1.profile.npz[/]
        """
        from tfprod.monitor import Profile, load_dataset

        d = load_dataset(data)
        result = Profile.of(d.features, capacity=capacity)
        for other in merge:
            result = result.merge(Profile.load(other))
        result.save(str(out).removesuffix(".profile.npz") + ".profile.npz")
        console.print(table(f"profile of {result.rows:,} rows ({len(result.keys):,} sampled)",
                            ["feature", "dtype", "count", "missing", "mean", "std", "min", "max"],
                            [[k, s.dtype, s.count, s.missing, f"{s.mean:.4g}", f"{s.std:.4g}",
                              s.minimum, s.maximum] for k, s in result.summaries.items()]))
        err_console.print(f"[dim]wrote {out}[/]")


_LOG_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def _served(serving: str, label: str | None, model_name: str | None, since: str | None) -> Any:
    """SERVING as a Dataset: a request log (a URL or a .db file) or any data file."""
    import time

    from tfprod.errors import TfprodError
    from tfprod.monitor import load_dataset

    if not (serving.startswith(("sqlite://", "postgresql://", "postgres://"))
            or serving.endswith(_LOG_SUFFIXES)):
        if model_name is not None or since is not None:
            raise TfprodError(f"--model_name / --since select requests of a log; {serving} is "
                              "a data file (give a .db path or a sqlite:// / postgresql:// URL)")
        return load_dataset(serving, label=label)
    from tfprod.monitor.store import open_store, records_to_dataset, redact

    store = open_store(serving, create=False)
    try:
        records = store.read(model_name, since=None if since is None
                             else time.time() - parse_since(since))
    finally:
        store.close()
    where = f"{redact(serving)}" + (f", model {model_name!r}" if model_name else "") + (
        f", last {since}" if since else "")
    if not records:
        raise TfprodError(f"{where}: no logged requests; check the log, --model_name and "
                          "--since")
    models = {r.model for r in records}
    if len(models) > 1:
        raise TfprodError(f"{where}: requests of {len(models)} models ({', '.join(sorted(models))})"
                          "; choose one with --model_name")
    served = records_to_dataset(records)
    served.source = f"{where} ({len(records)} requests)"
    return served


def _keras_outputs(path: Path, inputs: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """The Keras model's outputs on ``inputs``, named as the served outputs are."""
    from tfprod.errors import TfprodError

    tf()
    import keras
    import numpy as np

    try:
        net = keras.saving.load_model(path)
    except Exception as e:  # a missing, foreign or corrupt file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TfprodError(f"--keras {path}: not a loadable Keras model ({first}); give the "
                          ".keras file the model was trained as") from None
    names = [t.name.split("/")[0].split(":")[0] for t in net.inputs]
    x: Any = {k: inputs[k] for k in names if k in inputs}
    if len(x) != len(names):
        if len(names) == 1 and len(inputs) == 1:
            x = next(iter(inputs.values()))
        else:
            raise TfprodError(f"--keras {path}: the model takes {names}; the served examples "
                              f"have {sorted(inputs)}")
    elif len(names) == 1:
        x = x[names[0]]
    out = net.predict(x, batch_size=256, verbose=0)
    if isinstance(out, dict):
        return {k: np.asarray(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return {k: np.asarray(v) for k, v in zip(net.output_names, out, strict=True)}
    if len(served) == 1:
        return {next(iter(served)): np.asarray(out)}
    return {net.output_names[0]: np.asarray(out)}
