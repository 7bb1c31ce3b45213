"""Every command in the README's code blocks is one the tools accept as written: `harness` lines
parse against the CLI (every subcommand, flag and typed value; the slow ones are not run), `make`
lines name a Makefile target, `pip install` lines name extras pyproject declares. The cheap one runs."""

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest

from harness.cli import cli
from tests.conftest import harness_cli

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                lines.append(line)
    return lines


COMMANDS = _commands()


def _harness_args(line: str) -> list[str] | None:
    """The arguments given to harness on a README line (after a launcher, if any)."""
    words = shlex.split(line.replace("$(which harness)", "HARNESS"))
    for i, w in enumerate(words):
        if w in ("harness", "HARNESS"):
            return words[i + 1:]
        if w == "-m" and i + 1 < len(words) and words[i + 1] == "harness":
            return words[i + 2:]
    return None


def test_the_readme_has_commands():
    assert sum(1 for c in COMMANDS if _harness_args(c) is not None) >= 30


def _parse(args: list[str]) -> None:
    """Parse as the CLI would, without running: unknown flags, missing values, bad types raise."""
    ctx = cli.make_context("harness", list(args), resilient_parsing=False)
    name, sub, rest = cli.resolve_command(ctx, ctx.protected_args + ctx.args)
    if isinstance(sub, click.Group):
        name, sub, rest = sub.resolve_command(ctx, rest)
    sub.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("line", [c for c in COMMANDS if _harness_args(c) is not None and "..." not in c])
def test_each_harness_command_parses(line):
    args = _harness_args(line)
    if args != ["--version"]:  # that one runs for real below
        _parse(args)


@pytest.mark.parametrize("args", [["run", "--model", "m", "--lenghts", "1k"], ["run", "--model", "m", "--seed", "x"],
                                  ["data", "biuld"], ["train", "--out"]])
def test_the_check_catches_a_wrong_command(args):
    with pytest.raises(click.ClickException):
        _parse(args)


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("make ")])
def test_each_make_command_names_a_target(line):
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert line.split()[1] in targets, line


@pytest.mark.parametrize("line", [c for c in COMMANDS if "pip install" in c and "-e" in c])
def test_each_pip_extra_exists(line):
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for wanted in re.findall(r"\.\[([\w,]+)\]", line):
        assert set(wanted.split(",")) <= extras, line


def test_the_cheap_one_runs():
    assert harness_cli("--version").returncode == 0
