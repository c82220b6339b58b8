"""Text cleaning (the `text` an LM reads) and tokenisation (the `tokens` a bag-of-words sees)."""

from __future__ import annotations

import pytest

from dyembed.errors import ConfigError
from dyembed.text import check_language, clean_text, render_template, supported_languages, template_fields, tokenize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Arts, Music &amp; Photography", "Arts, Music & Photography"),
        ("double &amp;amp; escaped", "double & escaped"),
        ("<p>Hello <b>world</b></p>", "Hello world"),
        # inline tags vanish inside a word run, block tags separate words
        ("Arts &amp; <i>crafts</i>.", "Arts & crafts."),
        ("one<br/>two<li>three</li>", "one two three"),
        ("x<!-- comment -->y", "x y"),
        # an Amazon title that is a scraping artifact: a tag cut off before its ">"
        ('<span class="a-size-medium a-color-secondary"', ""),
        ("a < b and c > d", "a < b and c > d"),
        ("  many \t spaces\n\nand lines ", "many spaces and lines"),
        ("ﬁne ligature", "fine ligature"),  # NFKC
        ("Caf\u0065\u0301", "Café"),  # combining accent composed
        ("zero\u200bwidth", "zerowidth"),
        (None, ""),
        (42, "42"),
    ],
)
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


def test_tokenize_lowercases_removes_stopwords_and_stems():
    assert tokenize("The Running Dogs are running in the Gardens") == ["run", "dog", "run", "garden"]
    # apostrophes: the stopword list has "don't"; possessive 's is stemmed away
    assert tokenize("I don't like the user's choices") == ["like", "user", "choic"]
    assert tokenize("") == []


def test_tokenize_other_language_and_iso_code():
    assert tokenize("Les chats mangent des poissons", "french") == ["chat", "mangent", "poisson"]
    assert tokenize("Die Katzen essen Fische", "de") == ["katz", "ess", "fisch"]


def test_unsupported_language_is_config_error():
    with pytest.raises(ConfigError, match="data.language.*klingon"):
        check_language("klingon")
    with pytest.raises(ConfigError):
        tokenize("x", "klingon")
    assert "english" in supported_languages()


def test_render_template_drops_empty_fields_with_their_separator():
    t = "{title}. {description}"
    assert render_template(t, {"title": "T", "description": "D."}) == "T. D."
    assert render_template(t, {"title": "T", "description": ""}) == "T"
    assert render_template(t, {"title": "", "description": "D"}) == "D"
    assert render_template(t, {}) == ""
    assert render_template("{title}. Genres: {genres}", {"title": "Heat (1995)", "genres": ["Action", "Crime"]}) == "Heat (1995). Genres: Action, Crime"
    assert render_template("{title}. Genres: {genres}", {"title": "X", "genres": []}) == "X"
    assert render_template("{a} &amp; <b>{b}</b>", {"a": "x", "b": "y"}) == "x & y"


def test_template_fields():
    assert template_fields("{title}. {genres}. {description}") == ["title", "genres", "description"]
    with pytest.raises(ConfigError, match="text_template"):
        template_fields("{title")
