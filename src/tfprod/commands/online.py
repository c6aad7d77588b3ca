"""``tfprod online``: continuous learning from the served traffic (run, status, bench)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import typer

from tfprod.commands import group
from tfprod.console import console, err_console, table, tf, write_json


def _seconds(text: str) -> float:
    from tfprod.commands.monitor import parse_since

    return parse_since(text)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _rollout(server: str, model: str) -> dict[str, Any]:
    """The server's ``/v1/models/MODEL/rollout`` answer (``server``: HOST:PORT or a URL)."""
    from tfprod.errors import TfprodError
    from tfprod.serve.client import RestClient

    address = server.split("://", 1)[-1].rstrip("/")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TfprodError(f"--server {server!r}; expected HOST:PORT of the REST API, e.g. "
                          "127.0.0.1:8501")
    try:
        with RestClient(host, int(port), timeout=10) as client:
            return client.rollout(model)
    except OSError as e:
        raise TfprodError(f"--server {server}: cannot reach tfprod serve ({e}); is it running "
                          "with --rest_api_port there?") from None


def _print_rollout(r: dict[str, Any]) -> None:
    total = sum(a["requests"] for a in r["arms"]) or 1
    title = {"ab": "A/B split", "canary": "canary split"}.get(r["split"], "no split")
    console.print(table(
        f"{r['model']}: {title} (since the server started)",
        ["arm", "version", "weight %", "requests", "share %", "errors", "mean ms"],
        [[a["arm"], _fmt(a["version"]), f"{a['weight_percent']:.1f}", a["requests"],
          f"{100 * a['requests'] / total:.1f}", a["errors"],
          "-" if a["latency_ms_mean"] is None else f"{a['latency_ms_mean']:.2f}"]
         for a in r["arms"]]))
    if r.get("shadow"):
        sh = r["shadow"]
        console.print(f"shadow: version {sh['version']}, {sh['answered']} copies answered, "
                      f"{sh['dropped']} dropped")


def register(app: typer.Typer) -> None:
    """Add ``tfprod online run|status|bench`` to the root app."""
    online = group(app, "online", "Continuous learning: feedback -> update -> gate -> canary "
                                  "-> promote.")

    @online.command("run")
    def run(
        model_base_path: Path = typer.Option(..., "--model_base_path",
                                             help="The served model's base path."),
        log: str = typer.Option(..., "--log", help="The request log tfprod serve writes "
                                "(SQLite path or postgresql:// URL), with its feedback."),
        holdout: Path = typer.Option(..., "--holdout", help="Fixed labelled holdout: .npz, "
                                     "CSV with a label column, or an exported version."),
        model_config_file: Path = typer.Option(
            ..., "--model_config_file", help="The models.config tfprod serve re-reads "
            "(--model_config_file_poll_wait_seconds); the loop moves its labels."),
        model_name: str = typer.Option("default", "--model_name", help="The served name."),
        strategy: str = typer.Option("replay", "--strategy",
                                     help="replay, ewc, lwf or finetune."),
        model: Path | None = typer.Option(None, "--model", help="The .keras file of the "
                                          "serving version, if its folder has none."),
        interval: str = typer.Option("60s", "--interval", help="Time between steps."),
        rounds: int | None = typer.Option(None, "--rounds", help="Stop after N rounds."),
        min_examples: int = typer.Option(100, "--min_examples",
                                         help="Labelled examples needed for a round."),
        margin: float = typer.Option(0.01, "--margin", help="Gate: how much worse than "
                                     "the serving version (accuracy) a candidate may be."),
        floor: float = typer.Option(0.0, "--floor", help="Gate: accuracy to reach."),
        canary_min_requests: int = typer.Option(
            100, "--canary_min_requests", help="Labelled canary requests before a verdict."),
        buffer_size: int = typer.Option(500, "--buffer_size", help="Replay buffer size."),
        rollout: str = typer.Option("canary", "--rollout", help="canary (a share of "
                                    "traffic, tfprod serve --canary_percent) or shadow (a "
                                    "copy of it, answers only logged)."),
        state: Path | None = typer.Option(None, "--state", help="State folder "
                                          "(default BASE.online)."),
        nice: int = typer.Option(0, "--nice", help="Run the loop this much nicer (0-19), "
                                 "so a server on the same cores keeps serving during a round."),
        threads: int | None = typer.Option(None, "--threads", help="TensorFlow threads per "
                                           "pool for the learner (default: all cores)."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the steps here."),
    ) -> None:
        """Learn from labelled traffic, gate, publish a canary, promote or roll back.

        Runs until SIGTERM / Ctrl-C (the step in progress finishes) or --rounds. On cores it
        shares with tfprod serve, --nice 10 --threads 1 keeps the server's throughput.

        Example: [bold]tfprod online run --model_base_path models/digits --log log.db
        --holdout holdout.npz --model_config_file models.config --interval 60s[/]
        """
        tf()
        from tfprod.online.loop import OnlineLoop
        from tfprod.online.priority import lower_priority

        if nice or threads is not None:
            now = lower_priority(nice, threads)
            err_console.print(f"learning at niceness {now['nice']}, TensorFlow threads "
                              f"{now['intra_op_threads'] or 'default'} intra-op / "
                              f"{now['inter_op_threads'] or 'default'} inter-op",
                              highlight=False)

        args = {"buffer_size": buffer_size} if strategy == "replay" else {}
        loop = OnlineLoop(model_base_path, str(holdout), model_config_file=model_config_file,
                          log_url=log, model_name=model_name, strategy=strategy,
                          learner_args=args, keras_model=model, min_examples=min_examples,
                          margin=margin, floor=floor, canary_min_requests=canary_min_requests,
                          rollout=rollout,
                          state_dir=state, log=lambda m: err_console.print(m, highlight=False))
        stop = threading.Event()
        steps: list[dict[str, Any]] = []
        previous = {s: signal.signal(s, lambda *_: stop.set())
                    for s in (signal.SIGTERM, signal.SIGINT)}

        def show(result: dict[str, Any]) -> None:
            steps.append({k: v for k, v in result.items() if k != "decision"})
            if result["action"] != "wait":
                console.print(table(f"step: {result['action']}", ["figure", "value"], [
                    [k, _fmt(v)] for k, v in result.items()
                    if k not in ("action", "decision")]))

        try:
            with console.status("online loop running (Ctrl-C stops it)"):
                ran = loop.run(interval=_seconds(interval), rounds=rounds, stop=stop,
                               on_step=show)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            loop.close()
        console.print(f"{ran} round(s); stable version {loop.state['stable']}"
                      + (f", canary {loop.state['canary']}" if loop.state["canary"] else ""))
        write_json(json_path, {"steps": steps, "state": {k: loop.state[k] for k in (
            "round", "stable", "canary")}})

    @online.command("status")
    def status(
        model_base_path: Path = typer.Argument(..., help="The served model's base path."),
        state: Path | None = typer.Option(None, "--state", help="State folder."),
        log: str | None = typer.Option(None, "--log", help="Request log: each version's "
                                       "accuracy on its labelled requests (A/B figures)."),
        model_name: str | None = typer.Option(None, "--model_name", help="Served name "
                                              "(default: the base path's folder name)."),
        since: str | None = typer.Option(None, "--since", help="Only requests this recent "
                                         "(90s, 30m, 1h, 7d)."),
        server: str | None = typer.Option(None, "--server", help="HOST:PORT of tfprod serve's "
                                          "REST API: the live split (canary or --ab_weights) "
                                          "with each arm's share, requests, errors, latency."),
        json_path: Path | None = typer.Option(None, "--json", help="Write it as JSON."),
    ) -> None:
        """Versions, their gate decisions, the labels, the canary, and with --log each
        version's accuracy on the labelled traffic it served; with --server the live traffic
        split per arm.

        Example: [bold]tfprod online status models/digits --log requests.db --since 1h
        --server 127.0.0.1:8501[/]
        """
        import time

        from tfprod.online.status import online_status

        s = online_status(model_base_path, state, log_url=log, model=model_name,
                          since=None if since is None else time.time() - _seconds(since))
        if server is not None:
            s["rollout"] = _rollout(server, model_name or Path(s["base_path"]).name)
        console.print(table(f"{s['base_path']}: round {s['round']}, stable {_fmt(s['stable'])}"
                            f", canary {_fmt(s['canary'])}",
                            ["version", "label", "fate", "blessed", "holdout", "baseline",
                             "served acc", "labelled"],
                            [[v["version"], v["label"] or "-", v["fate"] or "-",
                              _fmt(v["blessed"]), _fmt(v["holdout"]), _fmt(v["baseline"]),
                              _fmt(v["accuracy"]), v["labelled"]]
                             for v in s["versions"]]))
        if s.get("rollout") is not None:
            _print_rollout(s["rollout"])
        if s["rejected_rounds"]:
            console.print(f"rejected candidates (kept in {s['state_dir']}/rejected): rounds "
                          f"{', '.join(map(str, s['rejected_rounds']))}")
        write_json(json_path, s)

    @online.command("bench")
    def bench(
        methods: str = typer.Option("finetune,ewc,lwf,replay-500,joint", "--methods",
                                    help="Comma-separated: finetune, ewc, lwf, replay-N, "
                                    "joint."),
        seeds: int = typer.Option(1, "--seeds", help="Seeds per method."),
        epochs: int = typer.Option(5, "--epochs", help="Epochs per task."),
        json_path: Path | None = typer.Option(None, "--json", help="Write the results."),
    ) -> None:
        """Class-incremental split digits: accuracy after the last task, per learner.

        Example: [bold]tfprod online bench --methods finetune,replay-500,joint --seeds 3[/]
        """
        tf()
        import numpy as np

        from tfprod.errors import TfprodError
        from tfprod.online.bench import run_split

        names = [m.strip() for m in methods.split(",") if m.strip()]
        for m in names:
            kind, _, size = m.partition("-")
            if kind not in ("finetune", "ewc", "lwf", "replay", "joint") or (
                    kind == "replay" and not size.isdigit()):
                raise TfprodError(f"--methods {m!r}; expected finetune, ewc, lwf, replay-N "
                                  "(N examples) or joint")
        results = []
        with console.status("split digits"):
            for m in names:
                for seed in range(seeds):
                    results.append(run_split(m, seed, epochs=epochs))
        rows = []
        for m in names:
            acc = np.array([r.accuracy for r in results if r.method == m])
            secs = np.array([r.seconds for r in results if r.method == m])
            rows.append([m, f"{acc.mean():.3f}", f"{acc.min():.3f}-{acc.max():.3f}",
                         f"{np.median(secs):.1f}"])
        console.print(table(f"split digits, 5 tasks x 2 classes, {seeds} seed(s)",
                            ["method", "accuracy", "min-max", "seconds"], rows))
        write_json(json_path, [r.__dict__ for r in results])
