import json

import pytest

from harness.errors import UserError
from harness.store import RunStore


def _manifest(lengths):
    return {"config": {"suites": {"needle": {"lengths": lengths}}}, "model": {"name": "m"}}


def test_append_resume_and_refuse_a_different_config(tmp_path):
    store = RunStore.open(tmp_path / "run", _manifest([1, 2]))
    store.append({"suite": "needle", "key": "a", "score": 1.0})
    store.append({"suite": "needle", "key": "b", "score": 0.5})
    again = RunStore.open(tmp_path / "run", _manifest([1, 2]))
    assert again.done("needle") == {"a", "b"}
    with pytest.raises(UserError, match=r"different config \(differs in: suites.needle.lengths\)"):
        RunStore.open(tmp_path / "run", _manifest([1, 2, 3]))


def test_torn_last_line_is_dropped_and_cut_on_reopen(tmp_path):
    store = RunStore.open(tmp_path / "run", _manifest([1]))
    store.append({"suite": "needle", "key": "a", "score": 1.0})
    with open(store.results_path, "ab") as fh:  # what a power cut mid-write could leave
        fh.write(b'{"suite":"needle","key":"b","sc')
    assert [r["key"] for r in store.results()] == ["a"]
    reopened = RunStore.open(tmp_path / "run", _manifest([1]))
    reopened.append({"suite": "needle", "key": "b", "score": 1.0})
    lines = reopened.results_path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["a", "b"]


def test_manifest_is_written_whole(tmp_path):
    RunStore.open(tmp_path / "run", _manifest([1]))
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["manifest.json"]  # no temp files left behind
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config_hash"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_files_and_directories_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    """A lab group shares results and caches: atomic writes must not come out 0600/0700."""
    import os
    import stat

    from harness import rundir

    old = os.umask(umask)
    try:
        rundir.write_json(tmp_path / "a.json", {"x": 1})
        RunStore.open(tmp_path / "run", _manifest([1])).append({"suite": "needle", "key": "k", "score": 1.0})
        with rundir.publishing(tmp_path / "published") as tmp:
            (tmp / "weights.bin").write_bytes(b"0")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == file_mode
    for path in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE((tmp_path / "published").stat().st_mode) == dir_mode


@pytest.mark.parametrize("damage", [b"garbage{\n", b"[1, 2]\n", b"\xff\xfe not utf-8\n"])
def test_a_damaged_line_is_one_clear_error(tmp_path, damage):
    store = RunStore.open(tmp_path / "run", _manifest([1]))
    store.append({"suite": "needle", "key": "a", "score": 1.0})
    with open(store.results_path, "ab") as fh:
        fh.write(damage)
    store.append({"suite": "needle", "key": "b", "score": 1.0})
    with pytest.raises(UserError, match=r"results.jsonl: line 2 is not a JSON record .* delete that line"):
        list(store.results())
