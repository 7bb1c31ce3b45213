"""BookQA: the metrics, middle truncation, the offline set built from real plays, the reader."""

import json
import re

import pytest
import yaml

from harness.errors import UserError
from harness.tasks import bookqa, scoring
from harness.data import embedded
from tests.conftest import harness_cli


def test_both_metrics_on_known_strings():
    assert scoring.qa_f1("The Aldous!", "aldous") == 1.0  # articles and punctuation dropped
    # "it was aldous" vs "aldous of york": 1 common token, precision 1/3, recall 1/3
    assert scoring.qa_f1("it was Aldous", "Aldous of York") == pytest.approx(1 / 3)
    assert scoring.qa_f1("nobody", "Aldous") == 0.0
    assert scoring.word_recall("I think it was Aldous, sir.", "Aldous") == 1.0
    assert scoring.word_recall("Aldous", "Aldous of York") == pytest.approx(1 / 3)


@pytest.mark.parametrize("output, answers, expected", [
    ("Aldous", ["Aldous"], 1.0),
    ("It was aldous.", ["Aldous"], 0.0),          # whitespace words: "aldous." keeps its period
    ("aldous of york", ["Aldous of York", "Aldous"], 1.0),
    ("Aldous", ["Aldous of York"], 1 / 3),
    ("Aldous", ["Brisa", "Aldous"], 0.0),         # the first answer only
    ("the king", ["the king of the isles"], 2 / 4),  # over the answer's distinct words
])
def test_reference_recall_on_fixed_answers(output, answers, expected):
    """eval/book/eval_book.py: len(set(gt) & set(pred)) / len(set(gt)), gt = answers[0].lower().split()."""
    assert scoring.reference_recall(output, answers[0], distinct=True) == pytest.approx(expected)


def test_middle_truncation_keeps_head_and_tail():
    ids = list(range(100))
    kept, cut = bookqa.middle_truncate(ids, 10)
    assert kept == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99] and cut == 5
    assert bookqa.middle_truncate(ids, 11)[0] == kept  # the reference keeps 2 * (L // 2)
    assert bookqa.middle_truncate(ids, 200) == (ids, 100)


@pytest.fixture(scope="module")
def offline():
    spec = yaml.safe_load(bookqa.SPEC_PATH.read_text())
    return spec, *bookqa.offline_items(spec, embedded.build(), seed=0)


def test_offline_set_answers_sit_at_their_recorded_offsets(offline):
    spec, books, items = offline
    assert len(items) >= 100 and len({i.book for i in items}) >= 3
    for item in items:
        line = books[item.book][item.offset:item.offset + item.span]
        (answer,) = item.answers
        assert re.search(rf"\b{answer}\b", line), item.id
        blanked = re.search(r'"(.*)"\?$', item.question).group(1)
        assert blanked.replace("____", answer) == line.strip(), item.id


def test_main_characters_are_renamed_throughout(offline):
    spec, books, items = offline
    for book_id, text in books.items():
        original = next(d for d in _docs() if d["id"] == book_id)["text"]
        for old in bookqa._speakers(original, spec["offline"]["rename"]):
            assert not re.search(rf"\b{old}\b", text, flags=re.I), (book_id, old)
    again = bookqa.offline_items(spec, embedded.build(), seed=0)[1]
    assert again == items  # deterministic from the seed


def _docs():
    spec = yaml.safe_load(bookqa.SPEC_PATH.read_text())
    return list(embedded.read_documents(embedded.build(), spec["offline"]["books"]).values())


def test_infinitebench_reader_names_the_missing_field(tmp_path):
    f = tmp_path / "ib.jsonl"
    f.write_text(json.dumps({"id": 0, "context": "a book", "input": "q?", "answer": ["x"]}) + "\n"
                 + json.dumps({"id": 1, "context": "a book", "answer": ["y"]}) + "\n")
    with pytest.raises(UserError, match="line 2 has no 'input' field"):
        bookqa.read_infinitebench(f)


def test_bookqa_runs_end_to_end_on_an_infinitebench_file(tiny_model_dir, kjv, tmp_path):
    f = tmp_path / "ib.jsonl"
    rows = [{"id": k, "context": kjv.text[k * 20000:(k + 1) * 20000], "input": "Who created the heaven and the earth?",
             "answer": ["God"], "options": []} for k in range(2)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    proc = harness_cli("run", "--model", str(tiny_model_dir), "--suite", "bookqa", "--bookqa", str(f),
                       "--lengths", "512,1k", "--dtype", "fp32", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 4 and {r["length"] for r in results} == {512, 1024}
    assert all(abs(r["tokens"] - r["length"]) <= 0.02 * r["length"] for r in results)
    assert all(set(r["scores"]) == {"paper", "qa_f1", "word_recall"} for r in results)
    assert re.search(r"bookqa .* 1K .* paper recall / qa_f1", proc.stderr)
    import hashlib

    cfg = json.loads((out / "manifest.json").read_text())["config"]["suites"]["bookqa"]
    assert cfg["file_sha256"] == hashlib.sha256(f.read_bytes()).hexdigest() and cfg["questions"] == 2
    assert cfg["prompt"].startswith("<|im_start|>Read the book below and answer a question.")
