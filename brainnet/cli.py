"""The ``brainnet`` command line (typer). Nothing imports this module; it imports the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Simulate a society of micro language models organised like a brain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

Sets = Annotated[
    Optional[list[str]],  # noqa: UP045 (typer needs Optional here on py3.10)
    typer.Option("--set", "-s", help="Override a field: --set train.lr=3e-4 (repeatable)."),
]


def _fail(problems: list[str] | str) -> None:
    """Print one line per problem and exit 2 (bad input, never a traceback)."""
    for line in [problems] if isinstance(problems, str) else problems:
        err.print("[bold red]error:[/] ", end="")
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _load(scenario: str, sets: list[str] | None, **extra: object):
    from brainnet.config import ScenarioError, load_scenario

    overrides = list(sets or []) + [f"{k}={v}" for k, v in extra.items() if v is not None]
    try:
        return load_scenario(scenario, overrides)
    except ScenarioError as e:
        _fail(e.problems)


@app.command()
def run(
    scenario: Annotated[
        str | None,
        typer.Argument(help="A built-in name (see `brainnet scenarios`) or a YAML file."),
    ] = None,  # noqa: UP045
    sets: Sets = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu or cuda (= --set device=...).")
    ] = None,  # noqa: UP045
    steps: Annotated[
        int | None, typer.Option(help="Training steps (= --set train.steps=N).")
    ] = None,  # noqa: UP045
    seed: Annotated[Optional[int], typer.Option(help="Random seed (= --set seed=N).")] = None,  # noqa: UP045
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Parent of the run directory (default: runs/).")
    ] = None,  # noqa: UP045
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary, for scripts.")
    ] = False,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write report.html at the end.")
    ] = True,
    resume: Annotated[
        Path | None,
        typer.Option(help="Go on with the run in RUN_DIR, in that directory (--steps N: extend)."),
    ] = None,  # noqa: UP045
) -> None:
    """Train a scenario and write a run directory (config, metrics, events, checkpoint), or
    go on with a run from its newest intact checkpoint (``--resume RUN_DIR``)."""
    from brainnet.checkpoint import CheckpointError
    from brainnet.config import ScenarioError
    from brainnet.engine import Simulation
    from brainnet.engine.guard import NonFiniteError

    if resume is not None:
        options = (("SCENARIO", scenario), ("--set", sets), ("--device", device),
                   ("--seed", seed), ("--out", out_dir))  # fmt: skip
        given = [n for n, v in options if v not in (None, [])]  # --seed 0 is given too
        if given:
            _fail(f"--resume {str(resume)!r}: {', '.join(given)} not allowed: a resumed run "
                  "keeps its own scenario (a changed one is a new run); allowed: --steps N "
                  "to extend it")  # fmt: skip
        try:
            sim = Simulation.resume_in_place(resume, steps)
        except (ScenarioError, CheckpointError) as e:
            _fail(e.problems if isinstance(e, ScenarioError) else str(e))
        except OSError as e:
            _fail(_unwritable(e, resume))
        sc = sim.scenario
    elif scenario is None:
        _fail("SCENARIO is missing; allowed: a built-in name, a YAML file, or --resume RUN_DIR")
    else:
        sc = _load(scenario, sets, **{"device": device, "train.steps": steps, "seed": seed})
        try:
            sim = Simulation(sc, out_dir=out_dir)
        except ScenarioError as e:
            _fail(e.problems)
    if not quiet:
        per = ", ".join(f"{g.count} x {g.type}" for g in sc.modules)
        n = sum(p.numel() for p in sim.banks.parameters())
        out.print(
            f"[bold]{sc.name}[/]: {per} ({n:,} parameters) on {sim.device}, "
            f"corpus {sc.corpus.kind}, {sc.train.steps} steps"
        )
    try:
        summary = sim.run(progress=not quiet)
        page = _report(Path(summary["run_dir"])) if report else None
    except OSError as e:  # --out cannot be created or written, or the disk is full
        _fail(_unwritable(e, resume if resume is not None else sim.out_dir))
    except NonFiniteError as e:  # the guard gave up: modules keep going non-finite
        err.print("[bold red]error:[/] ", end="")
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if quiet:
        print(summary["run_dir"])
        return
    table = Table(show_header=False, box=None)
    v0, v1 = summary["initial_val_loss"], summary["final_val_loss"]
    table.add_row("val loss", f"{v0:.4f} -> {v1:.4f}  ({100 * (1 - v1 / v0):.1f} % lower)")
    table.add_row("train loss", f"{summary['final_train_loss']:.4f}")
    table.add_row(
        "throughput",
        f"{summary['tokens_per_s']:,.0f} tokens/s "
        f"({summary['module_tokens_per_s']:,.0f} module-token passes/s)",
    )
    table.add_row("wall time", f"{summary['wall_s']:.1f} s")
    table.add_row("run dir", summary["run_dir"])
    if page is not None:
        table.add_row("report", str(page))
    out.print(table)


def _unwritable(e: OSError, where: Path) -> str:
    """One line for an OSError while writing a run directory in ``where``."""
    what = f"{e.filename}: " if e.filename else ""
    return (
        f"cannot write the run directory in {str(where)!r} ({what}{e.strerror or e}); "
        "allowed: --out DIR, a directory that can be created and written, with free space"
    )


def _report(path: Path) -> Path:
    from brainnet.viz.sweep import is_sweep_dir, render_sweep

    if is_sweep_dir(path):
        return render_sweep(path)
    from brainnet.viz.report import render

    return render(path)


def _run_dir(path: Path) -> Path:
    """A run directory or a sweep directory, else a one-line error."""
    from brainnet.viz.sweep import is_sweep_dir

    if not is_sweep_dir(path) and not (path / "config.yaml").is_file():
        _fail(
            f"run directory {str(path)!r}: no config.yaml; allowed: a directory written by "
            "`brainnet run`, or a sweep directory (sweep.yaml, index.parquet) by `brainnet sweep`"
        )
    return path


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory (runs/<name>-<time>) or a sweep directory.")
    ],
) -> None:
    """Write DIR/report.html, one self-contained file: a run's summary and plots, or a sweep's
    groups (mean ± 95 % CI over seeds), loss against messages (Pareto front) and loss curves."""
    out.print(f"wrote {_report(_run_dir(run_dir))}")


@app.command()
def compare(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Run directories, or sweep directories (and runs).")
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the page.")] = Path(
        "compare.html"
    ),
) -> None:
    """Overlay runs: loss against steps and against messages sent; given sweep directories,
    every group of every sweep (table, Pareto plot, loss curves). Writes one HTML page."""
    from brainnet.viz.sweep import compare_sweeps, is_sweep_dir, markdown_of

    dirs = [_run_dir(d) for d in run_dirs]
    if any(is_sweep_dir(d) for d in dirs):
        page = compare_sweeps(dirs, out_file)
        print(markdown_of(dirs))
    else:
        from brainnet.viz.report import compare as render_compare
        from brainnet.viz.table import markdown

        page = render_compare(dirs, out_file)
        print(markdown(dirs))
    out.print(f"wrote {page}")


@app.command()
def scenarios() -> None:
    """List the built-in scenarios with a one-line description each."""
    from brainnet.config import builtin_scenarios

    table = Table("name", "description", box=None)
    for name, desc in builtin_scenarios().items():
        table.add_row(name, desc)
    out.print(table)


@app.command()
def validate(
    scenario: Annotated[str, typer.Argument(help="A built-in name or a YAML file.")],
    sets: Sets = None,
    show: Annotated[
        bool, typer.Option(help="Print the resolved scenario (all defaults filled in).")
    ] = False,
) -> None:
    """Check a scenario (and overrides) without running it; exit 2 with one line per problem."""
    sc = _load(scenario, sets)
    if show:
        print(sc.to_yaml(), end="")
    else:
        out.print(f"[green]ok[/]: {scenario} is a valid scenario ({sc.name})")


@app.command()
def bench(
    cases: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated cases (default: all): loop, bank, bank_compiled, brain, "
            "brain_compiled, scaling, reorganize."
        ),
    ] = None,  # noqa: UP045
    n: Annotated[
        str | None, typer.Option("--n", help="Module counts, comma-separated (default: 8,64).")
    ] = None,  # noqa: UP045
    shapes: Annotated[
        str | None,
        typer.Option(help="Module shapes: baby, small, tiny (default: baby,small)."),
    ] = None,  # noqa: UP045
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    steps: Annotated[
        int | None, typer.Option(help="Timed steps per case (default: 20 on CUDA, 5 on CPU).")
    ] = None,  # noqa: UP045
    warmup: Annotated[
        int | None, typer.Option(help="Untimed steps first (default: 5 on CUDA, 2 on CPU).")
    ] = None,  # noqa: UP045
    compile_: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile", help="Run the compiled cases (default: on, off with --quick)."
        ),
    ] = None,  # noqa: UP045
    peak_flops: Annotated[
        float | None,
        typer.Option(help="Peak FLOP/s for MFU, e.g. 989e12 (default: table / measured)."),
    ] = None,  # noqa: UP045
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny shape, N=4, 2 steps: seconds, for tests.")
    ] = False,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="JSON results (default: runs/bench-<time>.json)."),
    ] = None,  # noqa: UP045
) -> None:
    """Training throughput, MFU and peak memory: naive loop vs bank vs the brain society."""
    from brainnet.bench import BenchError, default_out, run_bench, tables

    def progress(row: dict) -> None:  # one line per measured row, on stderr
        if row["skipped"]:
            what = f"skipped: {row['skipped']}"
        elif row.get("reorganize_ms") is not None:
            what = f"{row['reorganize_ms']:,.0f} ms for one reorganisation event"
        else:
            what = f"{row['step_ms']:,.1f} ms/step"
        err.print(f"{row['case']} {row['shape']} N={row['n_modules']}: {what}", markup=False,
                  highlight=False)  # fmt: skip

    path = out_file or default_out()
    try:
        rows = run_bench(cases, n, shapes, device=device, steps=steps, warmup=warmup,
                         compile=compile_, peak_flops=peak_flops, quick=quick, out=path,
                         log=progress)  # fmt: skip
    except BenchError as e:
        _fail(str(e))
    for table in tables(rows):
        out.print(table)
    out.print(f"wrote {path}")


@app.command()
def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="A sweep file: base scenario, set, grid, groups, seeds.")
    ],
    workers: Annotated[int, typer.Option(help="Runs at once (each gets cores / N threads).")] = 1,
    backend: Annotated[str, typer.Option(help="local (a process pool) or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray: join the cluster at ADDR (default: start one).")
    ] = None,  # noqa: UP045
    gpus_per_run: Annotated[
        float | None,
        typer.Option(help="Ray: GPUs per run, fractional allowed (default: share the GPUs)."),
    ] = None,  # noqa: UP045
    out_dir: Annotated[Path, typer.Option("--out", help="Parent of the sweep directory.")] = Path(
        "runs/sweeps"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary table.")] = False,
) -> None:
    """Run groups x seeds of a scenario into <out>/<name>/ (index.parquet, one directory per
    run); finished runs are skipped, failed and unfinished ones are redone."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from brainnet.config import ScenarioError
    from brainnet.stats import group_table
    from brainnet.sweep.driver import sweep as run_sweep

    bar = Progress(TextColumn("[bold]runs"), MofNCompleteColumn(), BarColumn(),
                   console=out, disable=quiet, transient=True)  # fmt: skip
    task = bar.add_task("runs", total=None)

    def start(info: dict) -> None:
        bar.update(task, total=info["todo"])
        if not quiet:
            threads = f" x {info['threads']} threads" if info["threads"] else ""
            out.print(
                f"[bold]{info['name']}[/]: {info['groups']} groups x {info['seeds']} seeds = "
                f"{info['runs']} runs ({info['finished']} finished, {info['todo']} to run) on "
                f"{info['backend']}, {info['workers']} workers{threads} -> {info['path']}",
                highlight=False,
                soft_wrap=True,
            )

    def ended(row: dict) -> None:
        bar.advance(task)
        if quiet:
            return
        if row["status"] == "done":
            val = row["final_val_loss"]
            what = f"val {val:.4f}" if val is not None else "no val loss"
            what += f"  {row['messages_per_step']:,.0f} msg/step  {row['wall_s']:.1f} s"
            bar.console.print(f"[green]done[/]   {row['id']}  {what}", highlight=False)
        else:
            bar.console.print(f"[red]failed[/] {row['id']}  ", end="", highlight=False)
            bar.console.print(row["error"], markup=False, highlight=False)

    def lost(id: str, why: str, again: bool) -> None:
        if not quiet:
            then = "run again" if again else "left pending (too many lost workers)"
            bar.console.print(f"[yellow]lost[/]   {id}  ({why}); {then}", highlight=False)

    try:
        with bar:
            result = run_sweep(sweep_file, out=out_dir, workers=workers, backend=backend,
                               address=address, gpus_per_run=gpus_per_run, on_start=start,
                               on_run=ended, on_lost=lost)  # fmt: skip
    except ScenarioError as e:
        _fail(e.problems)
    table = Table("group", "n", "val loss", "msg/step", "bytes/step", "sim ms", "params",
                  "active/token", box=None)  # fmt: skip
    for r in group_table(result.index):
        table.add_row(
            r["group"], f"{r['n']}/{r['runs']}", _pm(r, "final_val_loss", ".4f"),
            _pm(r, "messages_per_step", ",.1f"), _pm(r, "bytes_per_step", ",.0f"),
            _pm(r, "sim_time_ms", ",.2f"), _pm(r, "params_total", ",.0f"),
            _pm(r, "active_params_per_token", ",.0f"),
        )  # fmt: skip
    out.print(table)
    status = result.index.column("status").to_pylist()
    failed, pending = status.count("failed"), status.count("pending")
    out.print(f"index {result.path / 'index.parquet'}", highlight=False)
    if failed or pending:
        err.print(f"{failed} failed, {pending} unfinished: the same command redoes them",
                  highlight=False)  # fmt: skip
        raise typer.Exit(1)


def _pm(row: dict, key: str, fmt: str) -> str:
    """``mean ± half width`` (95 % t-interval) of a group_table column; - when unknown."""
    mean, half = row[key], row[f"{key}_ci"]
    if mean != mean:  # NaN: no finished run measured it
        return "-"
    return f"{mean:{fmt}}" if half != half else f"{mean:{fmt}} ± {half:{fmt}}"


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
