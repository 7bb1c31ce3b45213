"""The import structure (bench/architecture.py, pure ast): every module on a floor, no import up a
floor, no import circle, no function over 60 lines; and the checker itself finds each of those."""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "architecture.py"


def _architecture():
    spec = importlib.util.spec_from_file_location("architecture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_its_floors_without_circles_or_long_functions():
    arch = _architecture()
    report = arch.analyse(ROOT)
    assert report.violations == 0, arch.render(report)
    assert len(report.modules) > 50 and report.functions > 500   # it did read the package
    assert {i.where for i in report.imports} == {"module", "function", "typing"}


def test_the_script_prints_the_figures_and_imports_no_torch():
    check = ("import runpy, sys; sys.argv = ['architecture.py']\n"
             "try:\n    runpy.run_path(%r, run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "assert 'torch' not in sys.modules\nsys.exit(code)" % str(SCRIPT))
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("imports that go up a floor: 0", "import circles: 0", "modules on no floor: 0"):
        assert line in out.stdout
    assert "functions over 60 lines in harness/, tasks/, trainer/, reports/: 0 of" in out.stdout


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_checker_finds_each_kind_of_violation(tmp_path):
    long_body = "".join(f"    x{i} = {i}\n" for i in range(60))
    _write(tmp_path, {
        "harness/__init__.py": "",
        "harness/cli.py": "",
        "harness/errors.py": "def fail():\n    from harness import cli   # up: base -> entry\n",
        "harness/newthing.py": "",                                  # on no floor
        "harness/data/__init__.py": "",
        "harness/data/corpus.py": "def open_source():\n    from harness.data import embedded\n",
        "harness/data/embedded.py": "from harness.data.corpus import open_source\n",   # a circle
        "tasks/__init__.py": "",
        "tasks/needle.py": "from harness.tasks import needle_prompt\n",
        # typing only: no circle with needle, and a floor check still (tasks -> tasks: fine)
        "tasks/needle_prompt.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from harness.tasks.needle import Cell\n",
        "trainer/__init__.py": "",
        "reports/__init__.py": f"def long():\n{long_body}",        # 61 lines
    })
    arch = _architecture()
    report = arch.analyse(tmp_path)
    assert report.unplaced == ["harness.newthing"]
    assert [(i.source, i.target, i.where) for i in report.upward] == [("harness.errors", "harness.cli", "function")]
    assert report.circles == [["harness.data.corpus", "harness.data.embedded"]]
    assert [(name, n) for _, name, n in report.long_functions] == [("long", 61)]
    assert report.violations == 4
    typing = [i for i in report.imports if i.where == "typing"]
    assert [(i.source, i.target) for i in typing] == [("harness.tasks.needle_prompt", "harness.tasks.needle")]
