"""``tfprod export``: a ``.keras`` model -> a versioned SavedModel (+ ``.keras`` / weights)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from tfprod.console import console, progress, table, tf, write_json
from tfprod.errors import TfprodError


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _data_path(path: Path) -> Path:
    """A sample folder (``tfprod data sample``) stands for its ``train`` split."""
    if path.is_dir() and not (path / "schema.json").exists():
        if (path / "train").is_dir():
            return path / "train"
        if (path / "train.csv").is_file():
            return path / "train.csv"
    return path


def _reference_data(path: Path, model: Any, label: str | None) -> Any:
    from tfprod.models.model_data import load_data
    from tfprod.models.target import find_task

    path = _data_path(path)
    if label is None and path.suffix.lower() == ".csv" and find_task(model) is None:
        label = "label"  # a model trained by tfprod train knows its label column
    return load_data(path, model=model, label=label, batch_size=256, seed=0)


def _signature_rows(endpoints: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, sig in endpoints.items():
        for direction in ("inputs", "outputs"):
            for tensor, spec in sig[direction].items():
                shape = "unknown" if spec["shape"] is None else "(" + ", ".join(
                    "None" if d is None else str(d) for d in spec["shape"]) + ")"
                rows.append([name, direction[:-1], tensor, spec["dtype"], shape])
    return rows


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model: Path = typer.Argument(..., help="The trained model, a .keras file."),
        base: Path = typer.Argument(..., help="Base path of versions (BASE/<version>/)."),
        version: int | None = typer.Option(None, help="Version number (default: next free)."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace an existing version / output files."),
        data: Path | None = typer.Option(
            None, help="Training data for warmup requests and reference statistics: image "
                       "folder, TFRecord folder, .csv, or a `tfprod data sample` folder."),
        label: str | None = typer.Option(None, help="Label feature/column of --data."),
        warmup: int = typer.Option(4, help="Warmup requests to write (with --data)."),
        top_k: int | None = typer.Option(None, "--top-k",
                                         help="Add a `classes` signature: top-k classes."),
        keras_out: Path | None = typer.Option(
            None, "--keras", help="Also save a .keras file (weights + optimizer state)."),
        weights_out: Path | None = typer.Option(
            None, "--weights", help="Also save the weights alone (.weights.h5)."),
        json_path: Path | None = typer.Option(None, "--json",
                                              help="Also write the result as JSON."),
        embedding: bool | None = typer.Option(
            None, "--embedding/--no-embedding", help="Add an `embedding` signature (the "
            "penultimate layer) and keep the reference sample's embeddings for drift; "
            "default: on for image models."),
    ) -> None:
        """Export a model for TF Serving: BASE/<version>/ with named signatures, atomically.

        Writes a SavedModel whose serving_default signature takes the model's raw inputs by
        name, warmup requests and reference statistics of --data in assets.extra/, to a hidden
        folder that is renamed to the next version number only once complete.

        Example: [bold]tfprod export model.keras models/digits --data /tmp/digits/train[/]
        """
        # Checked before TensorFlow is imported: a typo fails at once.
        if not model.exists():
            raise TfprodError(f"{model}: no such file; expected a .keras model file")
        if data is not None and not data.exists():
            raise TfprodError(f"--data {data}: no such file or folder")
        tf()
        from tfprod.export import export_saved_model, load_keras, save_keras, save_weights
        from tfprod.export.embedding import has_image_input, penultimate
        from tfprod.export.keras_files import check_keras_path, check_weights_path

        if keras_out is not None:
            check_keras_path(keras_out, overwrite=overwrite)
        if weights_out is not None:
            check_weights_path(weights_out, overwrite=overwrite)
        with progress() as p:
            task = p.add_task(f"loading {model}", total=None)
            net = load_keras(model)
            if embedding is None:  # images are compared on what the model sees
                embedding = has_image_input(net) and penultimate(net) is not None
            reference = None if data is None else _reference_data(data, net, label)
            result = export_saved_model(
                net, base, version=version, overwrite=overwrite, reference_data=reference,
                warmup=warmup, top_k=top_k, embedding=embedding,
                progress=lambda stage: p.update(task, description=stage))
            saved: dict[str, str] = {}
            if keras_out is not None:
                p.update(task, description=f"saving {keras_out}")
                saved["keras"] = save_keras(net, keras_out, overwrite=overwrite)
            if weights_out is not None:
                p.update(task, description=f"saving {weights_out}")
                saved["weights"] = save_weights(net, weights_out, overwrite=overwrite)

        rows = [["SavedModel", f"{result.path}", f"version {result.version}",
                 _size(result.size_bytes)]]
        if "warmup" in result.files:
            rows.append(["warmup requests", result.files["warmup"],
                         f"{result.warmup_requests} requests",
                         _size(os.path.getsize(result.files["warmup"]))])
        if "reference_stats" in result.files:
            path = result.files["reference_stats"]
            rows.append(["reference statistics", path, f"{result.reference_examples} examples",
                         _size(os.path.getsize(path))])
        if "reference_sample" in result.files and "embedding" in result.endpoints:
            path = result.files["reference_sample"]
            width = result.endpoints["embedding"]["outputs"]
            width = next(iter(width.values()))["shape"][1:] if width else []
            rows.append(["reference sample", path, f"with embeddings {width}",
                         _size(os.path.getsize(path))])
        for what, path in saved.items():
            rows.append([what, path, "", _size(os.path.getsize(path))])
        console.print(table(f"tfprod export: {net.name} -> {base} ({result.seconds:.1f} s)",
                             ["what", "path", "detail", "size"], rows))
        console.print(table("signatures", ["signature", "in/out", "name", "dtype", "shape"],
                             _signature_rows(result.endpoints)))
        write_json(json_path, {**result.to_json(), "saved": saved})
