"""`tfprod optimize` (every variant of a model, measured side by side) and `tfprod predict`."""

from __future__ import annotations

from pathlib import Path

import typer

from tfprod.console import console, progress, table, tf, write_json
from tfprod.errors import TfprodError


def _splits(data: Path, test: Path | None) -> tuple[Path, Path | None]:
    """The train and test paths: ``--data`` and ``--test``, or ``DATA/train`` and ``DATA/test``;
    ``None`` for the test path of one table (a CSV file or TFRecord folder)."""
    if test is not None:
        return data, test
    for train_name, test_name in (("train", "test"), ("train.csv", "test.csv")):
        if (data / train_name).exists() and (data / test_name).exists():
            return data / train_name, data / test_name
    if data.suffix.lower() == ".csv" and data.is_file() or (data / "schema.json").is_file():
        return data, None
    raise _no_test_set(data)


def _no_test_set(data: Path) -> TfprodError:
    return TfprodError(f"--data {data}: expected {data}/train and {data}/test (the layout "
                       "tfprod data sample writes), the table tfprod train trained this model "
                       "on with a validation split (its held-out rows are then the test set), "
                       "or pass the test set with --test PATH")


def _held_out(net, data: Path) -> float:
    """The hashed share of ``data`` the model was not trained on (its Target layer knows)."""
    from tfprod.models.target import find_target

    target = find_target(net)
    if target is None or not target.held_out:
        raise _no_test_set(data)
    return target.held_out


def optimize(
    model: Path = typer.Argument(..., help="The trained model (.keras)."),
    data: Path = typer.Option(..., help="Folder with train/ and test/ (image folders, TFRecord "
                                        "folders) or train.csv/test.csv; the CSV file or "
                                        "TFRecord folder tfprod train trained the model on "
                                        "(its held-out rows are the test set); or the "
                                        "training set with --test."),
    test: Path | None = typer.Option(None, help="The test set, when --data is the training set."),
    label: str | None = typer.Option(None, help="Label feature/column (TFRecord, CSV)."),
    max_drop: float = typer.Option(1.0, help="Accuracy budget of the recommendations (points)."),
    variants: str | None = typer.Option(
        None, help="Comma-separated subset (default: keras, xla, keras-int8, float32, dynamic, "
                   "float16, int8, int8-io, pruned50-int8, pruned80-int8; prunedNN-<kind> for "
                   "any NN)."),
    out: Path = typer.Option(Path("tfprod-variants"), help="Folder for the variant files."),
    runs: int = typer.Option(200, help="Timed batch-1 calls per variant."),
    prune_epochs: int = typer.Option(8, help="Fine-tuning epochs of each pruned variant."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
    png: Path | None = typer.Option(None, help="Also plot size vs latency vs accuracy (PNG)."),
) -> None:
    """Build every variant (LiteRT float32/dynamic/float16/int8, Keras int8, XLA, pruned + int8),
    measure size, latency, throughput and accuracy side by side, and recommend one per target.

    Example: [bold]tfprod optimize model.keras --data /tmp/digits --png variants.png[/]
    """
    from rich.markup import escape

    train_path, test_path = _splits(data, test)
    tf()
    from tfprod.models import load_data, load_model
    from tfprod.optimize.compare import optimize as run_optimize
    from tfprod.optimize.variants import DEFAULT_VARIANTS

    names = ([v.strip() for v in variants.split(",") if v.strip()] if variants is not None
             else list(DEFAULT_VARIANTS))
    with progress() as p:
        task = p.add_task(f"loading {model}", total=None)
        net = load_model(str(model))
        sides: tuple[dict, dict] = ({}, {})
        if test_path is None:  # the rows tfprod train held out of this table are the test set
            share = _held_out(net, data)
            test_path = train_path
            sides = ({"validation_split": share, "subset": "training"},
                     {"validation_split": share, "subset": "validation"})
        train = load_data(train_path, model=net, label=label, batch_size=256, **sides[0])
        test_set = load_data(test_path, model=net, label=label, batch_size=256, **sides[1])
        report = run_optimize(
            net, train, test_set, out_dir=out, max_drop=max_drop, variants=names, runs=runs,
            prune_epochs=prune_epochs, png=png,
            progress=lambda what, i, n: p.update(task, description=what, completed=i, total=n))
    console.print(table(f"tfprod optimize: {net.name} ({report.test_examples} test examples, "
                         f"float {report.metric} {report.reference:.2f})",
                         report.columns, report.rows))
    for name, note in report.notes:
        console.print(f"[dim]{name}: {escape(note)}[/]", highlight=False)
    for name, reason in report.refused:
        console.print(f"[yellow]{name} not built[/]: {escape(reason)}", highlight=False)
    for rec in report.recommendations:
        console.print(f"[bold]{rec.target}[/]: {rec.variant or 'none'} - {rec.reason}",
                      highlight=False)
    console.print(f"[dim]variants in {out}" + (f"; plot {report.plot}" if report.plot else "")
                  + "[/]")
    write_json(json_path, report.to_json())


def predict(
    model: Path = typer.Argument(..., help=".keras file, SavedModel folder (or TF Serving base "
                                           "folder: newest version) or .tflite file."),
    data: Path = typer.Argument(..., help=".npy array, image folder, TFRecord folder or .csv "
                                          "(a model trained on CSV columns)."),
    out: Path = typer.Option(..., help="Predictions file: .npy, .csv or .jsonl."),
    batch_size: int = typer.Option(256, help="Examples per model call."),
    feature: str | None = typer.Option(None, help="Input feature of a TFRecord folder."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the timing as JSON."),
) -> None:
    """Batched inference over a dataset with any exported variant; writes the predictions.

    The fix for calling model.predict once per example: one call per batch of --batch-size.

    Example: [bold]tfprod predict models/digits /tmp/digits/test --out predictions.jsonl[/]
    """
    tf()
    from tfprod.export.predict import predict as run_predict

    with progress() as p:
        task = p.add_task(f"predicting with {model.name}", total=None)
        result = run_predict(model, data, out, batch_size=batch_size, feature=feature,
                             progress=lambda n, total: p.update(task, completed=n, total=total))
    console.print(f"{result.examples} predictions (output {result.output_shape}) -> {out}; "
                  f"{result.examples_per_second:,.0f} examples/s ({result.seconds:.2f} s, "
                  f"{result.model_seconds:.2f} s in the model)", highlight=False)
    write_json(json_path, result.to_json())


def register(app: typer.Typer) -> None:
    """Adds ``optimize`` and ``predict`` to the root app."""
    app.command("optimize")(optimize)
    app.command("predict")(predict)
