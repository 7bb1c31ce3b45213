"""The README and the docs/ pages say what the tools do, and agree with each other and the tree.

Every command in their ```bash blocks is one the tools accept as written: `harness` lines parse
against the CLI (every subcommand, flag and typed value; the slow ones are not run), `make` lines
name a Makefile target, `pip install` lines name extras pyproject declares. The cheap one runs.
Links between the pages resolve (files and #anchors); the README's job table repeats BENCHMARKS.md's
current figures exactly; the README's layout names every module; the README fits 300 lines."""

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest

from harness.cli import cli
from tests.conftest import harness_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the pages whose commands are checked


def _commands(page: Path) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                lines.append(line)
    return lines


COMMANDS = [(page.relative_to(ROOT).as_posix(), line) for page in DOCS for line in _commands(page)]


def _harness_args(line: str) -> list[str] | None:
    """The arguments given to harness on a line (after a launcher, if any)."""
    words = shlex.split(line.replace("$(which harness)", "HARNESS"))
    for i, w in enumerate(words):
        if w in ("harness", "HARNESS"):
            return words[i + 1:]
        if w == "-m" and i + 1 < len(words) and words[i + 1] == "harness":
            return words[i + 2:]
    return None


def test_the_readme_and_docs_have_commands():
    assert sum(1 for _, c in COMMANDS if _harness_args(c) is not None) >= 30
    pages = {p for p, c in COMMANDS if _harness_args(c) is not None}
    assert {"README.md", "docs/cli.md", "docs/data.md", "docs/training.md", "docs/gpus.md"} <= pages, pages


def _parse(args: list[str]) -> None:
    """Parse as the CLI would, without running: unknown flags, missing values, bad types raise."""
    ctx = cli.make_context("harness", list(args), resilient_parsing=False)
    name, sub, rest = cli.resolve_command(ctx, ctx.protected_args + ctx.args)
    if isinstance(sub, click.Group):
        name, sub, rest = sub.resolve_command(ctx, rest)
    sub.make_context(name, rest, parent=ctx)


@pytest.mark.parametrize("page,line", [(p, c) for p, c in COMMANDS if _harness_args(c) is not None and "..." not in c])
def test_each_harness_command_parses(page, line):
    args = _harness_args(line)
    if args != ["--version"]:  # that one runs for real below
        _parse(args)


@pytest.mark.parametrize("args", [["run", "--model", "m", "--lenghts", "1k"], ["run", "--model", "m", "--seed", "x"],
                                  ["data", "biuld"], ["train", "--out"]])
def test_the_check_catches_a_wrong_command(args):
    with pytest.raises(click.ClickException):
        _parse(args)


@pytest.mark.parametrize("page,line", [(p, c) for p, c in COMMANDS if c.startswith("make ")])
def test_each_make_command_names_a_target(page, line):
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    assert line.split()[1] in targets, f"{page}: {line}"


@pytest.mark.parametrize("page,line", [(p, c) for p, c in COMMANDS if "pip install" in c and "-e" in c])
def test_each_pip_extra_exists(page, line):
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for wanted in re.findall(r"\.\[([\w,]+)\]", line):
        assert set(wanted.split(",")) <= extras, f"{page}: {line}"


def test_the_cheap_one_runs():
    assert harness_cli("--version").returncode == 0


def _claims(page: Path) -> list[tuple[str, str]]:
    """(comment, command) for each command whose comment says it runs "as the paper did": a comment
    (its lines read as one) covers the commands after it, up to the next comment or blank line."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        comment, after_command = "", False
        for line in block.replace("\\\n", " ").splitlines():
            text = line.strip()
            if text.startswith("#"):
                words = text.lstrip("#").strip()
                comment = words if after_command or not comment else f"{comment} {words}"
                after_command = False
            elif not text:
                comment, after_command = "", False
            else:
                after_command = True
                if "as the paper did" in comment:
                    out.append((comment, text.split(" # ")[0].strip()))
    return out


CLAIMS = [(page.relative_to(ROOT).as_posix(), c, line) for page in DOCS for c, line in _claims(page)]


def test_commands_that_claim_the_papers_protocol_run_on_it():
    """A command said to run "as the paper did" parses and names what that takes: the needle's paper
    grid on the reference protocol and the Paul Graham essays; BookQA's paper preset (128,000 tokens,
    not 128k's 131,072) on an InfiniteBench file; the released checkpoint with its frozen dynamic NTK."""
    import yaml

    from harness.tasks import needle
    from harness.values import parse_lengths

    assert {p for p, _, _ in CLAIMS} >= {"README.md", "docs/cli.md"} and len(CLAIMS) >= 3
    for page, comment, line in CLAIMS:
        args = _harness_args(line)
        _parse(args)
        value = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}
        where = f"{page}: {line}"
        if value.get("--suite") == "bookqa":
            presets = yaml.safe_load((ROOT / "tasks/bookqa.yaml").read_text())["presets"]
            lengths = parse_lengths(value.get("--lengths") or str(presets[value.get("--preset")]["lengths"]))
            assert lengths == [128000], where
            assert value.get("--bookqa"), where
            continue
        assert value.get("--suite", "needle") == "needle" and value.get("--preset") == "paper", where
        assert needle.protocol_for(needle.load_spec(), "paper", value.get("--protocol"), None, False) == "reference"
        assert value.get("--haystack") == "pg-essays", where
        if "checkpoint" in comment:
            assert value.get("--rope-scaling") == "frozen_dynamic:10@81920", where


def test_fidelity_marks_same_only_beside_a_test_that_exists():
    """docs/fidelity.md: every test a row names exists, and a row whose default is "same" names one
    ("same test": the row above's)."""
    text = (ROOT / "docs" / "fidelity.md").read_text()
    previous, same = [], 0
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")] if line.startswith("| ") else []
        if len(cells) != 4 or cells[0] in ("reference rule", "paper"):
            continue
        named = re.findall(r"(test_\w+)::(test_\w+)", cells[3])
        for module, function in named:
            source = ROOT / "tests" / f"{module}.py"
            assert source.is_file() and re.search(rf"^def {function}\(", source.read_text(), flags=re.M), \
                f"docs/fidelity.md names {module}::{function}, which does not exist"
        named = named or (previous if cells[3].startswith("same test") else [])
        if cells[1].startswith("same"):
            same += 1
            assert named, f"docs/fidelity.md marks {cells[0]!r} same without a test"
        previous = named
    assert same >= 15


# --- the pages against each other and the tree ---

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_between_pages_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def _table(text: str, header_start: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table whose header row starts with header_start."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def test_the_readme_job_table_repeats_the_current_benchmarks():
    """A figure the README repeats comes from BENCHMARKS.md's current table, word for word, with its date."""
    jobs = _table((ROOT / "README.md").read_text(), "| job | hardware | time | date |")
    current = {row[0]: row for row in _table((ROOT / "BENCHMARKS.md").read_text(), "| figure | value | date |")}
    assert len(jobs) >= 5
    for job, _hardware, time, date in jobs:
        assert job in current, f"README's job {job!r} has no row in BENCHMARKS.md's current figures"
        assert (time, date) == tuple(current[job][1:3]), (job, (time, date), current[job][1:3])


def test_every_current_benchmark_names_its_date_commit_machine_and_command():
    rows = _table((ROOT / "BENCHMARKS.md").read_text(), "| figure | value | date | commit | machine | command |")
    assert len(rows) >= 20
    for row in rows:
        assert len(row) == 6, row
        assert re.fullmatch(r"20\d\d-\d\d-\d\d", row[2]), row
        assert re.search(r"[0-9a-f]{7}", row[3]), row
        assert row[4] and row[5], row


def test_the_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    words = set(re.findall(r"[\w.]+", layout))
    missing = []
    for folder in ("harness", "tasks", "trainer", "reports"):
        for module in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in module.parts:
                continue
            if module.name not in words and module.stem not in words:
                missing.append(module.relative_to(ROOT).as_posix())
    assert not missing, f"README.md's layout section does not name: {missing}"


def test_the_readme_fits_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_the_python_version_agrees_with_pyproject():
    """The README names the Python that pyproject requires, and tests use what that Python has (tomllib)."""
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.fullmatch(r">=3\.(\d+)", required).group(1)
    assert int(minor) >= 11  # tomllib, and numpy/pandas/scipy/transformers as pinned in constraints/ci.txt
    assert f"Python 3.{minor}+" in (ROOT / "README.md").read_text()
