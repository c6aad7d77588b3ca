"""``tfprod train``, ``tfprod profile`` and ``tfprod bench step``: the training stage."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape

from tfprod.commands import group
from tfprod.console import console, err_console, progress, state, table, tf, write_json
from tfprod.errors import TfprodError


def train(
    model: str = typer.Option(..., help="Preset (mlp, cnn), module:function, or a .keras file."),
    data: str = typer.Option(..., help="Image folder, TFRecord folder or .csv file."),
    epochs: int = typer.Option(5, help="Epochs."),
    batch_size: int = typer.Option(32, help="Global batch size (split across replicas)."),
    strategy: str = typer.Option("auto", help="auto | one | mirrored | multi-worker | ps"),
    workers: int = typer.Option(0, help="Launch N local workers (multi-worker / ps)."),
    label: str | None = typer.Option(None, help="Label feature/column (TFRecord, CSV)."),
    image_size: int = typer.Option(32, help="Side of square images (image folders)."),
    logdir: str = typer.Option("runs", help="TensorBoard log folder."),
    checkpoint_dir: str | None = typer.Option(None, help="Checkpoint folder (enables --resume)."),
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint."),
    accumulate: int = typer.Option(1, help="Gradient accumulation: micro-batches per update."),
    clip_norm: float | None = typer.Option(None, help="Clip gradients to this global norm."),
    mixed_precision: str | None = typer.Option(None, help="mixed_float16 | mixed_bfloat16"),
    jit: bool = typer.Option(False, help="Compile the step with XLA."),
    learning_rate: float = typer.Option(1e-3, help="Learning rate of the presets."),
    validation: str | None = typer.Option(
        None, help="Validation data of the same kind and columns as --data."),
    validation_split: float | None = typer.Option(
        None, help="Share of --data held out for validation by a hashed split (default 0.2 "
                   "without --validation; 0: none)."),
    task: str | None = typer.Option(None, help="classification | regression (default: read "
                                               "from the labels)."),
    num_classes: int | None = typer.Option(None, help="Classes, for integer class ids 0..N-1."),
    early_stopping: int | None = typer.Option(
        None, help="Stop after N epochs without a better validation loss."),
    save: str | None = typer.Option(
        None, help="Save the model (.keras): the best epoch's, with validation data."),
    cluster_timeout: float = typer.Option(60.0, help="Seconds to wait for the other tasks."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Train a model on your data under any tf.distribute strategy, scored on held-out data.

    The task is read from the labels (k classes, binary, regression in the label's units;
    string labels become class names) and printed; a hashed 20% of --data is held out unless
    --validation is given; the best epoch's weights (lowest validation loss) are kept and saved.

    Example: [bold]tfprod train --model mlp --data wine.csv --label label --early-stopping 3
    --save model.keras[/]
    Images: [bold]tfprod train --model cnn --data digits/train --strategy mirrored --epochs 3[/]
    Multi-worker on this machine: [bold]tfprod train --model cnn --data digits/train
    --strategy multi-worker --workers 2[/]
    """
    tf()  # before any tfprod.train import, which imports TensorFlow
    from tfprod.train.cluster import launch_local, strip_workers_flag
    from tfprod.train.run import TrainConfig

    if mixed_precision not in (None, "mixed_float16", "mixed_bfloat16"):
        raise TfprodError(f"--mixed-precision {mixed_precision}; expected mixed_float16 or "
                          "mixed_bfloat16")
    if validation is not None and validation_split:
        raise TfprodError(f"--validation {validation} and --validation-split "
                          f"{validation_split}: choose one source of validation data")
    config = TrainConfig(
        model=model, data=data, epochs=epochs, batch_size=batch_size, strategy=strategy,
        label=label, image_size=image_size, logdir=logdir, checkpoint_dir=checkpoint_dir,
        resume=resume, accumulation_steps=accumulate, clip_norm=clip_norm,
        mixed_precision=mixed_precision, jit_compile=jit, learning_rate=learning_rate,
        validation=validation,
        validation_split=0.2 if validation_split is None else validation_split,
        task=task, num_classes=num_classes, early_stopping=early_stopping,
        save=save, cluster_timeout=cluster_timeout)

    def run_here() -> None:
        from tfprod.train.run import run_training, worker_json_path

        result = run_training(config, console=err_console)
        columns, rows = epoch_table(result.history, result.epochs, result.best_epoch)
        strategy_name = ("default strategy" if result.strategy == "_DefaultDistributionStrategy"
                         else result.strategy)
        console.print(table(f"tfprod train: {strategy_name}, {result.replicas} replica(s), "
                             f"{result.task}", columns, rows))
        if result.best_epoch is not None:
            stopped = " (stopped early)" if result.stopped_early else ""
            i = result.epochs.index(result.best_epoch)
            console.print(f"best epoch {result.best_epoch}{stopped}: validation loss "
                          f"{result.history['val_loss'][i]:.4f}; its weights are kept",
                          highlight=False)
        if result.saved:
            which = (f" (the weights of epoch {result.best_epoch})"
                     if result.best_epoch is not None else "")
            console.print(f"saved {result.saved}{which}", highlight=False)
        console.print(f"TensorBoard: tensorboard --logdir {logdir}")
        write_json(worker_json_path(json_path), result.to_json())

    if workers:
        argv = strip_workers_flag(sys.argv[1:] if state["argv"] is None else state["argv"])
        launch_local(argv, workers=workers, strategy=strategy, logdir=logdir,
                     run_chief=run_here)
    else:
        run_here()


_SHORT = {"loss": "loss", "accuracy": "acc", "macro_f1": "F1", "auc": "AUC", "mae": "MAE",
          "rmse": "RMSE"}


def epoch_table(history: dict[str, list[float]], epochs: list[int], best: int | None
                ) -> tuple[list[str], list[list[str]]]:
    """One row per epoch: training loss and metrics, then validation's (``*`` marks the best)."""
    train = ["loss"] + [k for k in history if k != "loss" and not k.startswith("val_")]
    names = train + [f"val_{k}" for k in train]
    names = [k for k in names if k in history]
    names = [k for k in names if all(isinstance(v, float) for v in history[k])]
    columns = ["epoch"] + [("val " if k.startswith("val_") else "")
                           + _SHORT.get(k.removeprefix("val_"), k.removeprefix("val_"))
                           for k in names]
    rows = []
    for i, epoch in enumerate(epochs or range(1, len(history.get("loss", [])) + 1)):
        mark = "*" if epoch == best else ""
        rows.append([f"{epoch}{mark}"] + [f"{history[k][i]:.4f}" for k in names])
    return columns, rows


def profile(
    model: str = typer.Option(..., help="Preset (mlp, cnn), module:function, or a .keras file."),
    data: Path = typer.Option(..., help="Image folder (one subfolder per class)."),
    steps: int = typer.Option(50, help="Timed training steps."),
    warmup: int = typer.Option(5, help="Untimed steps first (tracing)."),
    batch_size: int = typer.Option(32, help="Batch size."),
    image_size: int = typer.Option(32, help="Side of square images (presets)."),
    logdir: Path | None = typer.Option(None, help="Also record a tf.profiler trace here."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Is training input-bound or compute-bound? Times data waits vs the step; names the fix.

    With --logdir the timed steps are also traced by tf.profiler; view them with TensorBoard's
    profile plugin (pip install tensorboard-plugin-profile; tensorboard --logdir LOGDIR).

    Example: [bold]tfprod profile --model cnn --data /tmp/digits/train --logdir runs/profile[/]
    """
    tf()
    from tfprod.train.profile import load_for_profile, profile_training

    with progress() as p:
        p.add_task(f"loading {data}", total=None)
        net, ds = load_for_profile(model, data, batch_size=batch_size, image_size=image_size)
        p.add_task(f"profiling {warmup} + {steps} steps", total=None)
        report = profile_training(net, ds, steps=steps, warmup=warmup, logdir=logdir)
    console.print(table(f"tfprod profile: {net.name} on {data}", report.columns, report.rows))
    style = {"input-bound": "red", "compute-bound": "green", "balanced": "yellow"}
    console.print(f"verdict: [{style[report.verdict]}]{report.verdict}[/]")
    write_json(json_path, report.to_json())


def bench_step(
    model: str = typer.Option("mlp", help="mlp (784-128-10), cnn (small_cnn, 32x32x1), "
                                          "module:function, or a .keras file."),
    batch_size: int = typer.Option(32, help="Batch size (random data, nothing downloaded)."),
    steps: int = typer.Option(200, help="Timed steps per run."),
    repeats: int = typer.Option(3, help="Runs per variant; the median is reported."),
    variants: str = typer.Option("eager,function,xla,function_loop,xla_loop,mixed,fit,trainer",
                                 help="Comma-separated subset to run."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the report as JSON."),
) -> None:
    """Training steps/s of one model: eager, tf.function, XLA, mixed precision, fit, Trainer.

    Example: [bold]tfprod bench step --model mlp --steps 200 --repeats 3[/]
    """
    tf()
    from tfprod.train import step_bench

    model_fn, batch = step_bench.benchmark_inputs(model, batch_size)
    chosen = [v.strip() for v in variants.split(",") if v.strip()]
    with progress() as p:
        task = p.add_task("warming up (tracing, XLA compilation)", total=None)
        report = step_bench.bench_step(
            model_fn, batch, steps=steps, repeats=repeats, variants=chosen,
            progress=lambda name, i, n: p.update(task, description=name, completed=i, total=n))
    console.print(table(report.title, report.columns, report.rows))
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    write_json(json_path, report.to_json())


def register(app: typer.Typer) -> None:
    """Add ``tfprod train``, ``tfprod profile`` and ``tfprod bench step`` to the root app."""
    app.command("train")(train)
    app.command("profile")(profile)
    bench = group(app, "bench", "Benchmarks on this machine: training steps, execution modes.")
    bench.command("step")(bench_step)
