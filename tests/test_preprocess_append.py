"""`--append` for cron: stable ids, new ids for newcomers, the watermark and late events."""

from __future__ import annotations

import pytest

from test_preprocess import check_invariants, error_line, invoke, run, table, write

ITEMS = "item_id,title,description\na,Alpha,first\nb,Beta,second\nc,Gamma,third\n"
DAY1 = "user_id,item_id,timestamp\nu1,a,100\nu2,b,150\nu1,b,200\nu9,,120\n"
# u3 and item c are new; (u1,b,200) repeats an old event; ts 150 is older than the watermark 200
DAY2 = "user_id,item_id,timestamp\nu3,c,300\nu1,b,200\nu2,a,200\nu2,c,150\nu1,a,250\n"


def _setup(tmp_path):
    write(tmp_path / "items.csv", ITEMS)
    write(tmp_path / "day1.csv", DAY1)
    write(tmp_path / "day2.csv", DAY2)
    work = tmp_path / "w"
    run(work, events=str(tmp_path / "day1.csv"), items=str(tmp_path / "items.csv"))
    return work


def _decoded(work):
    users = [u["user_id"] for u in table(work, "users")]
    items = [i["item_id"] for i in table(work, "items")]
    return [(users[e["user_idx"]], items[e["item_idx"]], e["ts"]) for e in table(work, "events")]


def test_append_keeps_ids_adds_new_ones_and_rejects_late_events(tmp_path):
    work = _setup(tmp_path)
    users1, items1 = table(work, "users"), table(work, "items")
    summary = run(work, events=str(tmp_path / "day2.csv"), items=str(tmp_path / "items.csv"), append=True)
    m = check_invariants(work)
    assert table(work, "users")[: len(users1)] == users1 and table(work, "items")[: len(items1)] == items1
    assert [u["user_id"] for u in table(work, "users")] == ["u1", "u2", "u3"]
    assert [i["item_id"] for i in table(work, "items")] == ["a", "b", "c"]
    assert _decoded(work) == [("u1", "a", 100), ("u2", "b", 150), ("u1", "b", 200), ("u2", "a", 200), ("u1", "a", 250), ("u3", "c", 300)]
    assert summary["rejected"] == {"duplicate": 1, "out_of_order": 1}
    assert (summary["new_users"], summary["new_items"], summary["events_out"]) == (1, 1, 3)
    assert m["counts"]["rows_in"] == 9 and m["counts"]["rejected"] == {"missing_item": 1, "duplicate": 1, "out_of_order": 1}
    reasons = [(r["reason"], r["user"], r["item"], r["timestamp"]) for r in table(work, "rejected")]
    assert reasons == [("missing_item", "u9", "", "120"), ("duplicate", "u1", "b", "200"), ("out_of_order", "u2", "c", "150")]
    runs = m["runs"]
    assert [r["mode"] for r in runs] == ["full", "append"]
    assert runs[1]["watermark_before"] == 200 and runs[1]["first_row"] == 3 and m["watermark"] == 300


@pytest.mark.parametrize(("mode", "expected"), [
    ("keep", [("u1", "a", 100), ("u2", "b", 150), ("u2", "c", 150), ("u1", "b", 200), ("u2", "a", 200), ("u1", "a", 250), ("u3", "c", 300)]),
    ("clamp", [("u1", "a", 100), ("u2", "b", 150), ("u1", "b", 200), ("u2", "a", 200), ("u2", "c", 200), ("u1", "a", 250), ("u3", "c", 300)]),
])
def test_allow_late(tmp_path, mode, expected):
    work = _setup(tmp_path)
    summary = run(work, events=str(tmp_path / "day2.csv"), items=str(tmp_path / "items.csv"), append=True, allow_late=mode)
    check_invariants(work)
    assert _decoded(work) == expected
    assert summary["rejected"] == {"duplicate": 1}
    assert summary["late_kept" if mode == "keep" else "late_clamped"] == 1


def test_append_through_the_cli_uses_the_saved_config(tmp_path):
    work = _setup(tmp_path)
    result = invoke(["preprocess", work, "--append", "--events", tmp_path / "day2.csv"])
    assert result.exit_code == 0, result.output
    assert "out_of_order" in result.output and "(+1 new)" in result.output
    # unknown items are still rejected: the saved config points at the same items file
    write(tmp_path / "day3.csv", "user_id,item_id,timestamp\nu1,zzz,400\nu4,a,400\n")
    result = invoke(["preprocess", work, "--append", "--events", tmp_path / "day3.csv", "--allow-late", "keep"])
    assert result.exit_code == 0, result.output
    m = check_invariants(work)
    assert m["counts"]["rejected"]["unknown_item"] == 1 and len(m["runs"]) == 3
    result = invoke(["preprocess", work, "--append", "--events", tmp_path / "day3.csv", "--allow-late", "sometimes"])
    assert result.exit_code == 2 and "--allow-late" in error_line(result)


def test_append_without_previous_run_exits_3(tmp_path):
    write(tmp_path / "day2.csv", DAY2)
    result = invoke(["preprocess", tmp_path / "empty", "--append", "--events", tmp_path / "day2.csv"])
    assert result.exit_code == 3 and "nothing to append to" in error_line(result)
