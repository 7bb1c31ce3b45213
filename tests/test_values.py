import pytest

from harness.errors import UserError
from harness.values import format_length, parse_budget, parse_depths, parse_lengths, parse_names


def test_lengths_lists_suffixes_and_ranges():
    assert parse_lengths("1k,2k,4k") == [1024, 2048, 4096]
    assert parse_lengths("4096, 1.5k ,1k,1k") == [1024, 1536, 4096]
    assert parse_lengths("1k:4k:4") == [1024, 2048, 3072, 4096]
    # The paper's grid, as the seed repo computes it.
    paper = parse_lengths("1000:128000:40")
    assert len(paper) == 40 and paper[0] == 1000 and paper[-1] == 128000


def test_depths_and_budgets():
    assert parse_depths("0,50,100") == [0.0, 50.0, 100.0]
    assert parse_depths("0:100:10")[:3] == [0.0, 11.11, 22.22]
    assert parse_budget("50M") == 50_000_000 and parse_budget("2B") == 2_000_000_000
    assert format_length(4096) == "4K" and format_length(1536) == "1.5K" and format_length(1000) == "1000"


@pytest.mark.parametrize("bad", ["-1k", "0", "abc", "1k,,2k", "1.5", "1k:2k", "4k:1k:3", "1k:2k:x"])
def test_bad_lengths(bad):
    with pytest.raises(UserError, match="--lengths"):
        parse_lengths(bad)


@pytest.mark.parametrize("bad", ["101", "-5", "x", "0:120:3"])
def test_bad_depths(bad):
    with pytest.raises(UserError, match="--depths"):
        parse_depths(bad)


def test_names():
    assert parse_names("needle", ["needle"], "--suite") == ["needle"]
    with pytest.raises(UserError, match="known: needle"):
        parse_names("needle,bogus", ["needle"], "--suite")


def test_rope_lines_read_as_text():
    from harness.values import format_rope

    assert format_rope({"rope_theta": 100000.0, "rope_type": "default"}) == "RoPE default θ=100000"
    assert format_rope({"rope_type": "dynamic", "rope_theta": 5e5, "factor": 10.0,
                        "original_max_position_embeddings": 81920}) == "RoPE dynamic θ=500000 ×10 from 81920"
    assert format_rope(None) == "RoPE ?"
