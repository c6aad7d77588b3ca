"""``tfprod quickstart``: the main job, end to end on sample digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tfprod.console import console, err_console, table, tf, write_json


def quickstart(
    out: Path = typer.Option(Path("tfprod-quickstart"), help="Folder for everything it makes."),
    epochs: int = typer.Option(8, help="Training epochs."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Run the main job end to end on sample digits: data, pipeline, doctor, training, export,
    optimize, serving over TF Serving's REST API with a request log, drift of clean and
    shifted traffic, and one online round on the shifted traffic (gate, canary, verdict).

    Example: [bold]tfprod quickstart --out /tmp/qs --epochs 5[/]
    """
    tf()
    from tfprod import quickstart as qs

    rows: list[list[Any]] = []

    def on_stage(row: dict[str, Any]) -> None:
        rows.append([row["stage"], f"{row['seconds']:.1f}", row["result"]])
        err_console.print(f"[green]done[/] {row['stage']} ({row['seconds']:.1f} s)")

    result = qs.run(out, epochs=epochs, console=err_console, on_stage=on_stage)
    console.print(table("tfprod quickstart", ["stage", "seconds", "result"], rows))
    report = result.optimize
    console.print(table(f"variants of the model ({report.test_examples} test examples, float "
                         f"{report.metric} {report.reference:.2f}; tfprod optimize builds more)",
                         report.columns, report.rows))
    if result.drift:
        console.print(table("drift of the served traffic vs the reference (tfprod.monitor)",
                            ["traffic", "rows", "drifted", "joint", "predictions",
                             "est. accuracy", "verdict"],
                            [[d["traffic"], d["rows"], d["drifted"], d["joint"], d["predictions"],
                              d["estimated_accuracy"], d["verdict"]] for d in result.drift]))
    console.print(table("artifacts", ["what", "where / how to open"],
                         [[k, v] for k, v in result.artifacts.items()]))
    console.print(f"validation accuracy {result.validation_accuracy:.4f} (epoch "
                  f"{result.best_epoch}, kept); test accuracy [bold]{result.test_accuracy:.4f}"
                  f"[/] in {result.seconds:.0f} s")
    write_json(json_path, result.to_json())


def register(app: typer.Typer) -> None:
    """Add ``tfprod quickstart`` to the root app."""
    app.command("quickstart")(quickstart)
