"""``tfprod data``: sample sets, inspection, pipeline benchmarks."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from tfprod.commands import group
from tfprod.console import SEVERITY_STYLE, console, progress, table, tf, write_json


def data_sample(
    out: Path = typer.Argument(..., help="Output folder."),
    fmt: str = typer.Option("png", "--format", "-f", help="png | jpeg | tfrecord | csv"),
    size: int = typer.Option(32, help="Side of the square images (png/jpeg/tfrecord)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
) -> None:
    """Write the sample digits (shipped with scikit-learn) as image folders, TFRecords or CSV.

    Example: [bold]tfprod data sample /tmp/digits --format jpeg --size 64[/]
    """
    tf()
    from tfprod.data import write_sample

    with progress() as p:
        p.add_task(f"writing digits as {fmt}", total=None)
        paths = write_sample(out, fmt, image_size=size, overwrite=overwrite)
    console.print(table(f"sample digits ({fmt})", ["split", "path"],
                         [[k, v] for k, v in paths.items()]))


def _print_inspect(report) -> None:
    rows = []
    for s in report.features + ([report.label] if report.label else []):
        shape = "x".join("?" if d is None else str(d) for d in s.shape) or "scalar"
        fmt = (lambda v: f"{v:.4g}") if s.dtype not in ("string", "bytes") else (lambda v: "-")
        rows.append([s.name, s.dtype, shape, fmt(s.min), fmt(s.max), fmt(s.mean), fmt(s.std),
                     s.nan, s.inf])
    console.print(table(f"{report.source}: {report.num_examples} examples",
                         ["feature", "dtype", "shape", "min", "max", "mean", "std", "NaN", "Inf"],
                         rows))
    if report.class_counts:
        names = report.class_names
        total = report.num_examples
        console.print(table("class balance", ["label", "name", "count", "%"], [
            [k, names[k] if names and 0 <= k < len(names) else "", v, f"{100 * v / total:.1f}"]
            for k, v in sorted(report.class_counts.items())]))
    console.print(f"duplicates: {report.duplicates}")
    if report.findings:
        findings = Table(title="findings", title_justify="left")
        for c in ("severity", "finding", "fix"):
            findings.add_column(c, overflow="fold")
        for f in report.findings:
            findings.add_row(f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]", escape(f.message),
                             escape(f.fix))
        console.print(findings)
    else:
        console.print("[green]no findings[/]")


def data_inspect(
    path: Path = typer.Argument(..., help="Image folder, TFRecord folder or .csv file."),
    label: str | None = typer.Option(None, help="Label feature/column (TFRecord, CSV)."),
    num_classes: int | None = typer.Option(None, help="Flag labels outside [0, N)."),
    ignore_errors: bool = typer.Option(False, help="Skip unreadable files/records; report them."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Shapes, dtypes, ranges, NaN/Inf, class balance, duplicates, and what to fix.

    Exits with status 1 when an error-severity finding exists (usable in CI).

    Example: [bold]tfprod data inspect data/train.csv --label label --num-classes 10[/]
    """
    tf()
    from tfprod.data import inspect_path

    with progress() as p:
        task = p.add_task(f"inspecting {path}", total=None)
        report = inspect_path(path, label=label, num_classes=num_classes,
                              ignore_errors=ignore_errors,
                              progress=lambda n: p.update(task, completed=n))
    _print_inspect(report)
    write_json(json_path, report.to_json())
    if report.has_errors:
        raise typer.Exit(1)


def data_bench(
    path: Path = typer.Argument(..., help="Image folder or TFRecord folder."),
    image_size: int = typer.Option(64, help="Side of the square output images."),
    batch_size: int = typer.Option(64, help="Batch size."),
    repeats: int = typer.Option(1, help="Runs per pipeline; the median is reported."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Examples/s of a naive pipeline, Keras' loader and tfprod's, epochs 1 and 2, vs decode.

    Example: [bold]tfprod data bench /tmp/digits/train --image-size 32[/]
    """
    tf()
    from tfprod.data.bench import bench_path

    with progress() as p:
        task = p.add_task(f"benchmarking {path}", total=None)
        report = bench_path(path, image_size=(image_size, image_size), batch_size=batch_size,
                            repeats=repeats,
                            progress=lambda name, i, n: p.update(task, description=name,
                                                                 completed=i, total=n))
    console.print(table(report.title, report.columns, report.rows))
    write_json(json_path, report.to_json())


def register(app: typer.Typer) -> None:
    """Add ``tfprod data sample|inspect|bench`` to the root app."""
    data_app = group(app, "data", "Data: sample sets, inspection, pipeline benchmarks.")
    data_app.command("sample")(data_sample)
    data_app.command("inspect")(data_inspect)
    data_app.command("bench")(data_bench)
