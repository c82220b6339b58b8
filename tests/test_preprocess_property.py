"""Property: for any input, rows in = events out + rejected, and every output event is valid."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_preprocess import check_invariants, manifest, run, write

ITEM_IDS = ["a", "b", "c", "d"]
users = st.sampled_from(["u1", "u2", "u3", "", " ", "u 4"])
items = st.sampled_from(ITEM_IDS + ["zz", ""])
stamps = st.one_of(
    st.integers(min_value=0, max_value=50).map(str),
    st.integers(min_value=1_600_000_000, max_value=1_600_000_100).map(str),
    st.sampled_from(["", "soon", "1.5e9", "-3", "12:00", "NaN", "1600000000000"]),
)
rows = st.lists(st.tuples(users, items, stamps), min_size=1, max_size=60)


def _reference_valid(row: tuple[str, str, str]) -> bool:
    user, item, ts = (x.strip() for x in row)
    if not user or not item or item not in ITEM_IDS:
        return False
    try:
        return float(ts) == float(ts) and ts.lower() != "nan"
    except ValueError:
        return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows, malformed=st.integers(0, 3), kcore=st.sampled_from([0, 2]), dedupe=st.booleans())
def test_in_equals_out_plus_rejected(rows, malformed, kcore, dedupe):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lines = ["user_id,item_id,timestamp"] + [",".join(r) for r in rows] + ["only,two"] * malformed
        write(tmp / "ev.csv", "\n".join(lines) + "\n")
        write(tmp / "items.csv", "item_id,title\n" + "".join(f"{i},Item {i}\n" for i in ITEM_IDS))
        valid = [r for r in rows if _reference_valid(r)]
        try:
            run(tmp / "w", events=str(tmp / "ev.csv"), items=str(tmp / "items.csv"), kcore=kcore, drop_duplicates=dedupe)
        except Exception as exc:  # zero usable events is the one allowed failure
            from dyembed.errors import InputDataError

            assert isinstance(exc, InputDataError)
            assert "zero valid events" in str(exc) or "no events left" in str(exc)
            if "zero valid events" in str(exc):
                assert not valid
            return
        m = check_invariants(tmp / "w")
        assert m["counts"]["rows_in"] == len(rows) + malformed
        counts = m["counts"]["rejected"]
        assert counts.get("malformed_line", 0) == malformed
        # row-level checks agree with a plain-Python reference
        row_level = sum(counts.get(r, 0) for r in ("missing_user", "missing_item", "bad_timestamp", "unknown_item"))
        assert row_level == len(rows) - len(valid)
        if not dedupe and not kcore:
            assert m["counts"]["events_out"] == len(valid)
        events = pq.read_table(tmp / "w" / "events.parquet").to_pylist()
        user_ids = pq.read_table(tmp / "w" / "users.parquet").column("user_id").to_pylist()
        item_ids = pq.read_table(tmp / "w" / "items.parquet").column("item_id").to_pylist()
        assert all(u.strip() for u in user_ids) and set(item_ids) <= set(ITEM_IDS)
        # every output event is one of the valid input rows (as a multiset)
        out = Counter((user_ids[e["user_idx"]], item_ids[e["item_idx"]]) for e in events)
        inp = Counter((r[0].strip(), r[1].strip()) for r in valid)
        assert all(inp[k] >= n for k, n in out.items())
        assert manifest(tmp / "w")["counts"]["users"] == len(set(user_ids))
