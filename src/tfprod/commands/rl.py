"""``tfprod rl train | eval | export``: the DQN agent from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tfprod.commands import group
from tfprod.console import console, err_console, table, tf, write_json
from tfprod.errors import TfprodError


def _threads(n: int) -> None:
    tf()
    import tensorflow

    if n > 0:
        tensorflow.config.threading.set_intra_op_parallelism_threads(n)
        tensorflow.config.threading.set_inter_op_parallelism_threads(n)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TfprodError(f"--set {pair!r}; expected KEY=VALUE, e.g. --set dueling=true")
        value = value.strip()
        if value.lower() in ("none", "null"):
            out[key.strip()] = None
        elif value.startswith("["):
            out[key.strip()] = [int(v) for v in value.strip("[]").split(",") if v.strip()]
        else:
            out[key.strip()] = value
    return out


def _progress_bar():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("return {task.fields[ret]}  best {task.fields[best]}  "
                               "{task.fields[rate]} steps/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    transient=True)


def _fmt(x: float) -> str:
    return "-" if x != x or x in (float("inf"), float("-inf")) else f"{x:.1f}"


def _result_table(result: Any, run: Path) -> None:
    rows = [["final eval (kept)", f"{result.eval_mean_return:.1f} +- "
             f"{result.eval_std_return:.1f} over {result.eval_episodes} episodes"],
            ["kept weights", f"step {result.best_step:,} (eval {result.best_eval_return:.1f})"],
            ["env steps", f"{result.steps:,} in {result.episodes:,} episodes"],
            ["gradient steps", f"{result.gradient_steps:,}"],
            ["wall time", f"{result.wall_seconds:.1f} s ({result.steps_per_second:,.0f} "
                          "env steps/s)"],
            ["replay memory", f"{result.replay_bytes / 2**20:.1f} MiB"],
            ["run folder", str(run)]]
    console.print(table(f"tfprod rl train: {result.env}, seed {result.seed}",
                        ["what", "value"], rows))


def _settings_table(config: Any) -> None:
    from tfprod.rl.config import DQNConfig

    defaults = DQNConfig().to_json()
    values = config.to_json()
    rows = [[k, v if k != "hidden" else ", ".join(map(str, v)),
             "" if v == defaults[k] else "*"] for k, v in values.items()]
    half = (len(rows) + 1) // 2
    merged = [a + (b if b else ["", "", ""]) for a, b in
              zip(rows[:half], rows[half:] + [None] * (2 * half - len(rows)), strict=True)]
    console.print(table("DQN settings (* differs from the defaults)",
                        ["setting", "value", "", "setting", "value", ""], merged))


def train(
    env: str = typer.Option("CartPole-v1", help="A gymnasium id with a Discrete action space."),
    steps: int | None = typer.Option(None, help="Env steps (default: the preset's)."),
    seed: int = typer.Option(0, help="Seed of weights, exploration, replay and envs."),
    out: Path = typer.Option(..., help="Run folder: checkpoints, TensorBoard, models, PNG."),
    config: Path | None = typer.Option(None, help="JSON/TOML file of DQN settings."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE override, repeatable "
                                   "(e.g. --set dueling=true --set n_step=3)."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its checkpoint."),
    threads: int = typer.Option(1, help="TensorFlow threads; small networks run fastest on 1 "
                                        "(0: TensorFlow's default)."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Train a DQN agent (double DQN, target network, replay, keep-best evaluation).

    Presets for CartPole-v1, Acrobot-v1 and MountainCar-v0 (rl-baselines3-zoo's settings);
    --config and --set override them. A checkpoint is written every checkpoint_interval env
    steps; after a crash, --resume continues the same run exactly.

    Example: [bold]tfprod rl train --env CartPole-v1 --steps 50000 --seed 0 --out runs/cp[/]
    """
    from tfprod.rl.config import read_config_file, resolve
    from tfprod.rl.envs import env_spec
    from tfprod.rl.run import RunFolder

    run = RunFolder(out)
    # Checked before TensorFlow is imported: a typo fails at once.
    if resume:
        if config is not None or set_:
            raise TfprodError("--resume continues a run with its own settings; drop --config "
                              "and --set (only --steps may change)")
        meta = run.read_meta()
        if meta["env"] != env:
            raise TfprodError(f"{out} is a run of {meta['env']}, not {env}; resume it with "
                              f"--env {meta['env']} or train {env} in a new --out folder")
    else:
        if run.exists():
            meta = run.read_meta()
            raise TfprodError(f"{out} already holds a run ({meta['env']}, seed {meta['seed']}); "
                              "add --resume to continue it or choose a new --out folder")
        overrides = [read_config_file(config)] if config is not None else []
        overrides.append(_overrides(set_))
        if steps is not None:
            overrides.append({"steps": steps})
        cfg = resolve(env, *overrides)
        env_spec(env, torso=cfg.torso)
    _threads(threads)
    from tfprod.rl.dqn import DQN

    if resume:
        agent = DQN.resume(out, env_id=env, steps=steps)
        err_console.print(f"[dim]resuming {out} at env step {agent.env_steps:,}[/]")
    else:
        agent = DQN(env, cfg, seed=seed)
        agent.save_meta(out)
    _settings_table(agent.config)
    total = agent.config.steps
    with _progress_bar() as bar:
        task = bar.add_task(f"DQN {env}", total=total, completed=agent.env_steps, ret="-",
                            best="-", rate="-")

        def show(p: dict[str, Any]) -> None:
            bar.update(task, completed=p["step"], ret=_fmt(p["mean_return"]),
                       best=_fmt(p["best"]), rate=f"{p['steps_per_second']:,.0f}")

        result = agent.learn(out, on_progress=show)
    _result_table(result, out)
    write_json(json_path, result.to_json())


def evaluate(
    run: Path = typer.Argument(..., help="A run folder of `tfprod rl train`."),
    episodes: int = typer.Option(20, help="Greedy episodes."),
    which: str = typer.Option("best", help="best (the kept weights) | final."),
    render_gif: Path | None = typer.Option(None, help="Write the first episode as a GIF."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Evaluate a run's policy: greedy episodes on the final-evaluation seeds.

    Example: [bold]tfprod rl eval runs/cp --episodes 20 --render-gif cartpole.gif[/]
    """
    from tfprod.rl.run import RunFolder

    folder = RunFolder(run)
    meta = folder.read_meta()
    folder.model_path(which)
    if episodes < 1:
        raise TfprodError(f"--episodes {episodes}; expected at least 1")
    _threads(1)
    from tfprod.rl.evaluation import FINAL_SEED_OFFSET
    from tfprod.rl.evaluation import evaluate as play
    from tfprod.rl.network import make_actor

    actor = make_actor(folder.load_model(which))
    frames: list | None = [] if render_gif is not None else None
    result = play(actor, meta["env"], episodes=episodes,
                  seed=FINAL_SEED_OFFSET + 1000 * int(meta["seed"]),
                  action_start=int(meta["spec"]["action_start"]), frames=frames)
    rows = [["episodes", len(result.returns)], ["mean return", f"{result.mean:.2f}"],
            ["std", f"{result.std:.2f}"], ["min / max", f"{min(result.returns):.1f} / "
                                                        f"{max(result.returns):.1f}"],
            ["mean length", f"{sum(result.lengths) / len(result.lengths):.1f}"]]
    console.print(table(f"tfprod rl eval: {meta['env']} ({which} weights)", ["what", "value"],
                        rows))
    if render_gif is not None:
        from PIL import Image

        render_gif.parent.mkdir(parents=True, exist_ok=True)
        # Every other frame at half size: a 500-step episode stays a few MB.
        images = [Image.fromarray(f).reduce(2) for f in frames[::2]]
        images[0].save(render_gif, save_all=True, append_images=images[1:], duration=40,
                       loop=0)
        err_console.print(f"[dim]wrote {render_gif} ({len(images)} frames)[/]")
    write_json(json_path, {"env": meta["env"], "which": which, **result.to_json()})


def export(
    run: Path = typer.Argument(..., help="A run folder of `tfprod rl train`."),
    base: Path = typer.Argument(..., help="Base path of versions (BASE/<version>/)."),
    which: str = typer.Option("best", help="best (the kept weights) | final."),
    version: int | None = typer.Option(None, help="Version number (default: next free)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing version."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
) -> None:
    """Export a run's policy for TF Serving / tfprod serve: observation -> q_values, action.

    Example: [bold]tfprod rl export runs/cp models/cartpole[/]
    """
    from tfprod.rl.run import RunFolder

    folder = RunFolder(run)
    folder.read_meta()
    folder.model_path(which)
    _threads(1)
    from tfprod.console import progress
    from tfprod.rl.export import export_policy

    with progress() as p:
        task = p.add_task(f"exporting {run}", total=None)
        result = export_policy(run, base, which=which, version=version, overwrite=overwrite,
                               progress=lambda stage: p.update(task, description=stage))
    rows = [[direction[:-1], name, spec["dtype"], str(spec["shape"])]
            for direction in ("inputs", "outputs")
            for name, spec in result.signature[direction].items()]
    console.print(table(f"tfprod rl export: {run} -> {result.path} (version {result.version})",
                        ["in/out", "name", "dtype", "shape"], rows))
    write_json(json_path, result.to_json())


def register(app: typer.Typer) -> None:
    rl = group(app, "rl", "Reinforcement learning: a DQN agent (train, eval, export).")
    rl.command("train")(train)
    rl.command("eval")(evaluate)
    rl.command("export")(export)
