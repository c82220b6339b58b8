"""Built-in formats: each on a small fixture written here, and the real copies in ../shared/data."""

from __future__ import annotations

import json

import pytest

from conftest import shared_path
from test_preprocess import check_invariants, invoke, manifest, run, table, write


def _texts(work) -> dict[str, str]:
    return {r["item_id"]: r["text"] for r in table(work, "items")}


def _events(work) -> list[tuple[str, str, int]]:
    users = [u["user_id"] for u in table(work, "users")]
    items = [i["item_id"] for i in table(work, "items")]
    return [(users[e["user_idx"]], items[e["item_idx"]], e["ts"]) for e in table(work, "events")]


def test_movielens_100k(tmp_path):
    d = tmp_path / "ml-100k"
    write(d / "u.data", "1\t10\t5\t881250949\n2\t20\t3\t881250950\n1\t20\t4\t881250948\n3\t99\t2\t881250951\n")
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
              "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    write(d / "u.genre", "".join(f"{g}|{k}\n" for k, g in enumerate(genres)) + "\n")
    flags = lambda *on: "|".join("1" if g in on else "0" for g in genres)  # noqa: E731
    u_item = (f"10|Á köldum klaka (Cold Fever) (1994)|01-Jan-1994||http://x|{flags('Comedy', 'Drama')}\n"
              f"20|Heat (1995)|01-Jan-1995||http://y|{flags('Action', 'Crime', 'Thriller')}\n")
    (d / "u.item").write_bytes(u_item.encode("latin-1"))  # the real file is latin-1, not UTF-8
    work = tmp_path / "w"
    run(work, format="movielens-100k", input=str(d))
    m = check_invariants(work)
    assert _events(work) == [("1", "20", 881250948), ("1", "10", 881250949), ("2", "20", 881250950)]
    assert m["counts"]["rejected"] == {"unknown_item": 1}  # item 99 is not in u.item
    assert _texts(work) == {"10": "Á köldum klaka (Cold Fever) (1994). Genres: Comedy, Drama",
                            "20": "Heat (1995). Genres: Action, Crime, Thriller"}
    run(tmp_path / "w4", format="movielens-100k", input=str(d), rating_col="rating", min_rating=4.0)
    assert manifest(tmp_path / "w4")["counts"]["rejected"] == {"unknown_item": 1, "below_min_rating": 1}


def test_movielens_1m(tmp_path):
    d = tmp_path / "ml-1m"
    write(d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978300760\n")
    (d / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Star Wars: Episode I (1999)::Action|Sci-Fi\n".encode("latin-1"))
    run(tmp_path / "w", format="movielens-1m", input=str(d))
    check_invariants(tmp_path / "w")
    assert _events(tmp_path / "w") == [("1", "1193", 978300760), ("2", "1193", 978300760), ("1", "661", 978302109)]
    assert _texts(tmp_path / "w")["661"] == "Star Wars: Episode I (1999). Genres: Action, Sci-Fi"


def test_movielens_latest_with_tags(tmp_path):
    d = tmp_path / "ml-latest"
    write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,0.5,964982224\n")
    write(d / "movies.csv", 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"American President, The (1995)",(no genres listed)\n4,Unrated (1990),Drama\n')
    write(d / "tags.csv", "userId,movieId,tag,timestamp\n2,1,pixar,1\n5,1,Pixar,2\n5,1,fun,3\n9,3,politics,4\n")
    run(tmp_path / "w", format="movielens-latest", input=str(d))
    m = check_invariants(tmp_path / "w")
    assert _texts(tmp_path / "w") == {"1": "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun",
                                      "3": "American President, The (1995). Tags: politics"}
    assert m["counts"]["items"] == 2 and m["counts"]["items_file"]["distinct_ids"] == 3
    assert [i["role"] for i in m["inputs"]] == ["events", "items", "tags"]
    run(tmp_path / "w2", format="movielens-latest", input=str(d), keep_unused_items=True)
    assert list(_texts(tmp_path / "w2")) == ["3", "1", "4"]  # the unrated movie is kept last, as a cold item


def test_amazon_2018(tmp_path):
    d = tmp_path / "amz"
    reviews = [
        {"overall": 5.0, "reviewerID": "A1", "asin": "B1", "unixReviewTime": 1393372800, "reviewText": "great"},
        {"overall": 4.0, "reviewerID": "A2", "asin": "B1", "unixReviewTime": 1393372800},
        {"overall": 4.0, "reviewerID": "A2", "asin": "B1", "unixReviewTime": 1393372800},  # exact duplicate
        {"overall": 2.0, "reviewerID": "A1", "asin": "B2", "unixReviewTime": 1078531200},
        {"overall": 3.0, "reviewerID": "A3", "asin": "B9", "unixReviewTime": 1078531200},  # no metadata
    ]
    write(d / "Magazine_Subscriptions_5.json.gz", "".join(json.dumps(r) + "\n" for r in reviews), gz=True)
    meta = [
        {"asin": "B1", "title": '<span class="a-size-medium a-color-secondary"', "description": ["Arts &amp; <i>crafts</i>.", "", "Monthly."],
         "brand": "Acme Press", "category": ["Magazine Subscriptions", "Arts, Music &amp; Photography"], "main_cat": "Magazine Subscriptions"},
        {"asin": "B1", "title": "", "description": [], "brand": "Other", "category": []},  # a duplicate line: merged
        {"asin": "B2", "title": "Bikes Monthly", "description": [], "brand": "", "category": []},
        {"asin": "B2", "title": "", "description": ["Cycling news."], "brand": "Spoke Media", "category": []},
    ]
    write(d / "meta_Magazine_Subscriptions.json.gz", "".join(json.dumps(r) + "\n" for r in meta), gz=True)
    run(tmp_path / "w", format="amazon-2018", input=str(d))
    m = check_invariants(tmp_path / "w")
    assert m["counts"]["rejected"] == {"unknown_item": 1, "duplicate": 1}
    assert m["counts"]["items_file"] == {"rows_in": 4, "distinct_ids": 2, "rows_without_id": 0, "duplicates_merged": 2}
    assert _texts(tmp_path / "w") == {"B2": "Bikes Monthly. Spoke Media. Cycling news.",
                                      "B1": "Acme Press. Arts, Music & Photography. Arts & crafts. Monthly."}


def test_mind(tmp_path):
    d = tmp_path / "mind"
    write(d / "behaviors.tsv", "\n".join([
        "1\tU1\t11/15/2019 8:55:22 AM\tN1 N2\tN10-1 N11-0 N12-1",
        "2\tU2\t11/15/2019 8:55:21 AM\t\tN11-1",
        "3\tU3\tbroken line",
        "4\tU3\t11/15/2019 9:00:00 PM\tN1\tN13-0",  # nothing clicked: no events
    ]) + "\n")
    write(d / "news.tsv", "\n".join([
        "N10\tsports\tfootball_nfl\tBig Game Tonight\tThe teams meet.\thttp://a\t[]\t[]",
        "N11\tnews\tnewsus\tStorm &amp; Rain\t\thttp://b\t[]\t[]",
        "N12\tlifestyle\t\tRecipes\tEasy dinners.\thttp://c\t[]\t[]",
    ]) + "\n")
    run(tmp_path / "w", format="mind", input=str(d))
    m = check_invariants(tmp_path / "w")
    assert _events(tmp_path / "w") == [("U2", "N11", 1573808121), ("U1", "N10", 1573808122), ("U1", "N12", 1573808122)]
    assert m["counts"]["rejected"] == {"malformed_line": 1}
    assert [(r["line"], r["raw"]) for r in table(tmp_path / "w", "rejected")] == [(3, "3\tU3\tbroken line")]
    assert _texts(tmp_path / "w")["N10"] == "Big Game Tonight. The teams meet.. Category: sports, football_nfl"
    assert _texts(tmp_path / "w")["N11"] == "Storm & Rain. Category: news, newsus"


def test_recbole_atomic_files(tmp_path):
    d = tmp_path / "rb"
    write(d / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t5\t881250949\n2\t20\t3\t881250950.0\n")
    write(d / "ml.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq\n10\tToy Story\t1995\tAnimation Comedy\n20\tHeat\t1995\tAction\n")
    run(tmp_path / "w", format="recbole", input=str(d))
    check_invariants(tmp_path / "w")
    assert _events(tmp_path / "w") == [("1", "10", 881250949), ("2", "20", 881250950)]
    assert _texts(tmp_path / "w") == {"10": "Toy Story. 1995. Animation Comedy", "20": "Heat. 1995. Action"}
    run(tmp_path / "w2", format="recbole", input=str(d), text_template="{movie_title} ({genre})")
    assert _texts(tmp_path / "w2")["20"] == "Heat (Action)"


def test_missing_format_file_in_input_dir_exits_3(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(["preprocess", tmp_path / "w", "--format", "movielens-100k", "--input", tmp_path / "empty"])
    assert result.exit_code == 3 and "u.data" in result.output and str(tmp_path / "empty") in result.output
    result = invoke(["preprocess", tmp_path / "w", "--format", "synth", "--input", tmp_path / "nope"])
    assert result.exit_code == 3 and "input directory not found" in result.output


# ------------------------------------------------------------------ the real datasets


@pytest.mark.data
def test_real_ml_100k(tmp_path):
    summary = run(tmp_path / "w", format="movielens-100k", input=str(shared_path("data", "ml-100k")))
    m = check_invariants(tmp_path / "w")
    assert (summary["events_out"], summary["users"], summary["items"], summary["rejected_total"]) == (100_000, 943, 1_682, 0)
    assert m["time_range"]["min_ts"] == 874724710 and m["time_range"]["max_ts"] == 893286638
    texts = _texts(tmp_path / "w")
    assert texts["1633"].startswith("Á köldum klaka") and texts["1"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert m["counts"]["items_without_text"] == 0


@pytest.mark.data
def test_real_ml_latest_small(tmp_path):
    summary = run(tmp_path / "w", format="movielens-latest", input=str(shared_path("data", "ml-latest-small")))
    m = check_invariants(tmp_path / "w")
    assert (summary["events_out"], summary["users"], summary["items"], summary["rejected_total"]) == (100_836, 610, 9_724, 0)
    assert (m["time_range"]["min_ts"], m["time_range"]["max_ts"]) == (828124615, 1537799250)
    assert m["counts"]["items_file"]["distinct_ids"] == 9_742


@pytest.mark.data
def test_real_amazon_magazine_2018(tmp_path):
    summary = run(tmp_path / "w", format="amazon-2018", input=str(shared_path("data", "amazon-magazine-2018")))
    m = check_invariants(tmp_path / "w")
    # 64 reviews of the 6 items without metadata are unknown_item; 44 reviews repeat an earlier
    # (user, item, day) exactly
    assert summary["rows_in"] == 2_375
    assert summary["rejected"] == {"unknown_item": 64, "duplicate": 44}
    assert (summary["events_out"], summary["users"], summary["items"]) == (2_267, 348, 151)
    assert m["counts"]["items_file"] == {"rows_in": 3_385, "distinct_ids": 2_320, "rows_without_id": 0, "duplicates_merged": 1_065}
    texts = _texts(tmp_path / "w")
    assert not any("<span" in t or "&amp;" in t for t in texts.values())
