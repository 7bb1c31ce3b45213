"""A new suite is one module and one registry line (README: "Adding a suite"): a toy "count the words"
suite, written to a temporary module and registered by that one line, runs end to end through
``harness.run`` on the tiny random Llama: cells evaluated and stored, summary rows, its run-directory
name, its lm-eval rows, its figure and a comparison report, with nothing else in the harness told
about it."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

TOY = textwrap.dedent('''
    """Count the words: how many words a short text has, asked of the model."""

    from dataclasses import dataclass

    from harness import uncertainty
    from harness.errors import UserError
    from harness.tasks import base

    NAME = "count"
    TEXTS = ("red green", "one two three four", "the cat sat on the mat")


    @dataclass(frozen=True)
    class Cell:
        suite: str
        key: str
        length: int     # prompt tokens
        depth: float    # the heatmap's other axis: here the words to count
        text: str


    @dataclass(frozen=True)
    class CountConfig:
        texts: tuple
        unit: str
        max_new_tokens: int = 3

        def to_dict(self) -> dict:
            return {"texts": list(self.texts), "unit": self.unit, "max_new_tokens": self.max_new_tokens}


    @dataclass(frozen=True)
    class Options:
        unit: str = base.option("--count-unit", "Count: what is counted: words or letters.", "words")


    class CountSuite(base.Suite):
        name = NAME
        Options = Options
        figures = ("heatmap",)         # a kind the reports already draw
        report_pages = ("heatmaps",)
        compared_settings = ("texts", "unit")

        @classmethod
        def prepare(cls, grid, options):
            if options.unit not in ("words", "letters"):
                raise UserError(f"--count-unit: unknown {options.unit!r}; known: words, letters")
            return CountConfig(TEXTS, options.unit)

        @classmethod
        def bind(cls, prepared, loaded):
            return cls(prepared, loaded.tokenizer)

        @classmethod
        def run_dir_tag(cls, options):
            return options.unit

        @staticmethod
        def summary(results, manifest):
            rows = [r for r in results if r.get("suite") == NAME]
            if not rows:
                return []
            est = uncertainty.estimate([r["score"] for r in rows])
            return [base.Row.of(NAME, "all cells", "accuracy (mean)", est, column="count accuracy")]

        def __init__(self, config, tokenizer):
            self.config, self.tok = config, tokenizer

        def prompt(self, text):
            return self.tok(f"Text: {text}\\nNumber of {self.config.unit}:", add_special_tokens=False)["input_ids"]

        def answer(self, text):
            return len(text.split()) if self.config.unit == "words" else sum(c.isalpha() for c in text)

        def cells(self):
            return [Cell(NAME, f"{NAME}/{i}", len(self.prompt(t)), float(self.answer(t)), t)
                    for i, t in enumerate(self.config.texts)]

        def evaluate(self, cell, backend):
            gen = backend.generate(self.prompt(cell.text), self.config.max_new_tokens)
            right = str(self.answer(cell.text)) in gen.text.split()
            return {"suite": NAME, "key": cell.key, "length": cell.length, "depth": cell.depth,
                    "score": float(right), "scores": {"accuracy": float(right)}, "output": gen.text}
''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module on sys.path and its one registry line, both gone after the test."""
    from harness import tasks

    (tmp_path / "toy_count.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(tasks.SUITES, "count", "toy_count:CountSuite")
    yield tasks.get("count")
    sys.modules.pop("toy_count", None)


def test_a_toy_suite_runs_end_to_end_from_one_module_and_one_registry_line(toy, tiny_model_dir, tmp_path):
    import harness
    from harness import lm_eval_format
    from harness.evaluate import EvalRequest, prepare
    from harness.reports import compare, document, figures
    from harness.runner import default_run_dir

    out = tmp_path / "run"
    res = harness.run(str(tiny_model_dir), suites="count", dtype="fp32", out=out)

    stored = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in stored) == ["count/0", "count/1", "count/2"]
    assert [r["depth"] for r in sorted(stored, key=lambda r: r["key"])] == [2.0, 4.0, 6.0]
    assert res.manifest["config"]["suites"]["count"]["texts"][0] == "red green"
    (row,) = res.rows
    assert (row["suite"], row["slice"], row["n"]) == ("count", "all cells", 3)
    assert row["value"] == sum(r["score"] for r in stored) / 3

    # Its run-directory tag, from its own Options.
    prep = prepare(EvalRequest(suites="count", options={"count": toy.Options(unit="letters")}))
    assert default_run_dir(str(tiny_model_dir), prep).name.startswith(f"{tiny_model_dir.name}-letters-count-")

    # Its lm-eval rows by the default placement: harness_<suite>, the mean under its metric's name.
    doc = json.loads((out / lm_eval_format.FILE).read_text())
    assert doc["results"]["harness_count"]["accuracy,none"] == row["value"]
    assert doc["n-samples"]["harness_count"]["effective"] == 3

    # Its figure (a kind it names) and a comparison report with its page and its table column.
    paths = figures.draw(out, res.cells, res.manifest, tmp_path / "figures")
    assert [p.name for p in paths] == ["count_heatmap.png", "count_heatmap.pdf"]
    col = compare.collect([out])
    assert list(compare.table(col).columns) == ["count accuracy"]
    pdf = document.write_report([out], tmp_path / "report.pdf")
    pages = [p["title"] for p in document.inspect_pdf(pdf)]
    assert pages == ["Comparison table", "Count heatmaps", "Provenance"]   # no needle, loss or mixture data
