"""``tfprod doctor``: why a model does not learn, ranked causes with the evidence and the fix."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from tfprod.console import (
    SEVERITY_STYLE,
    console,
    progress,
    tf,
    write_json,
    write_text,
)


def _print_doctor(report) -> None:
    title = (f"tfprod doctor: {report.model} ({report.mode} mode, {report.num_examples} "
             f"examples, {report.seconds.get('total', 0):.1f} s)")
    if report.findings:
        findings = Table(title=title, title_justify="left", show_lines=True)
        for c in ("#", "severity", "finding", "evidence", "fix"):
            findings.add_column(c, overflow="fold")
        for i, f in enumerate(report.findings, 1):
            findings.add_row(str(i), f"[{SEVERITY_STYLE[f.severity]}]{f.severity}[/]",
                          f"[bold]{escape(f.title)}[/]\n[dim]{f.check}, {f.kind}[/]",
                          escape(f.evidence), escape(f.fix))
        console.print(findings)
    else:
        console.print(f"{title}\n[green]no findings[/]")
    console.print(f"[dim]passed: {', '.join(report.passed) or '-'}[/]")
    for check, why in report.skipped.items():
        console.print(f"[dim]skipped {check}: {escape(why)}[/]")
    for check, error in report.failed.items():
        console.print(f"[yellow]could not run {check} on this model: {escape(error)}[/]")
    for what, path in report.artifacts.items():
        console.print(f"{what}: {path}")


def doctor(
    model: str = typer.Option(..., help="module:function or a .keras file."),
    data: Path = typer.Option(..., help="Image folder, TFRecord folder or .csv file."),
    validation: Path | None = typer.Option(
        None, help="Validation split, same format as --data: checked for examples shared "
                   "with --data and for a different distribution."),
    label: str | None = typer.Option(None, help="Label feature/column (TFRecord, CSV)."),
    loss: str | None = typer.Option(None, help="Loss for an uncompiled model, e.g. "
                                               "sparse_categorical_crossentropy."),
    batch_size: int = typer.Option(32, help="Batch size."),
    full: bool = typer.Option(False, "--full", help="Also the learning-rate range test and a "
                                                    "short training watch (about a minute)."),
    plot: Path = typer.Option(Path("doctor-lr-range.png"),
                              help="Where --full writes the learning-rate curve (PNG)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
    markdown: Path | None = typer.Option(None, "--markdown",
                                         help="Also write the report as Markdown."),
) -> None:
    """Why is the model not learning? Ranked causes with the evidence and the fix.

    Checks the data (values, scale, labels, leakage, batch order, class balance), the loss
    against the output and targets, gradient flow, recurrent gradients, BatchNorm batch
    sizes, dead units, the labels' signal, the learning rate and its schedule, and whether one
    batch can be overfit (naming over-regularization); --validation compares a validation
    split with the training data; --full adds a learning-rate range test and a short training
    watch. Exits with status 1 when an error-severity finding exists (usable in CI).

    Example: [bold]tfprod doctor --model model.keras --data digits/train --validation digits/test[/]
    """
    tf()
    from tfprod.doctor import diagnose
    from tfprod.models import load_data, load_model

    with progress() as p:
        task = p.add_task(f"loading {model}", total=None)
        net = load_model(model)
        dataset = load_data(data, model=net, label=label, batch_size=batch_size)
        held_out = (None if validation is None else
                    load_data(validation, model=net, label=label, batch_size=batch_size))
        report = diagnose(net, dataset, mode="full" if full else "quick", loss=loss,
                          validation_data=held_out,
                          plot=plot if full else None,
                          progress=lambda name: p.update(task, description=name))
    _print_doctor(report)
    write_json(json_path, report.to_json())
    if markdown is not None:
        write_text(markdown, report.to_markdown())
    if report.has_errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``tfprod doctor`` to the root app."""
    app.command("doctor")(doctor)
