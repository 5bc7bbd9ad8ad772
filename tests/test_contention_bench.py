"""The contention benchmark: the fusion loop alone and beside a busy neighbour process, table and JSON, CLI."""
from __future__ import annotations

import json

from bench import contention_bench


def test_it_measures_every_neighbour_and_thread_count_and_writes_json(tmp_path, capsys):
    out = tmp_path / "contention.json"
    assert contention_bench.main(["--frames", "20", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["kernel_threads"], r["neighbour"]): r for r in result["rows"]}
    assert {n for _, n in rows} == set(contention_bench.NEIGHBOURS)
    for (threads, kind), r in rows.items():
        assert r["frame_ms"] > 0 and r["rate_vs_alone_all_threads"] > 0
        if kind == "none":
            assert r["rate_vs_alone_same_threads"] == 1.0
    assert "rate_vs_alone_same_threads" in capsys.readouterr().out


def test_bad_settings_give_one_line_and_exit_2(tmp_path, capsys):
    assert contention_bench.main(["--frames", "5", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "x.json").exists()
