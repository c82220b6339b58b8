"""Item text cleaning: the `text` the language model reads and the `tokens` a bag-of-words sees.

`clean_text` undoes what scrapers leave behind (HTML entities, tags — even a tag cut off at the end
of a field —, odd Unicode forms, runs of whitespace) and keeps the words as written.
`tokenize` then lowercases, splits on word characters, removes the language's stopwords (from the
`stopwords` package) and applies the Snowball stemmer of the same language (PyStemmer).
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections.abc import Iterable, Mapping
from string import Formatter

from dyembed.errors import ConfigError

# a tag: "<" + letter, "/" or "!" + anything up to ">" — or up to the end when the scraper cut it off
_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9]*|!)[^<>]*(?:>|$)")
# tags that separate words (others, like <b> or <i>, sit inside a sentence and vanish)
_BREAKING = {"br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "table", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "span"}
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u200b\u200c\u200d\ufeff]")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+(?:'\w+)*")
# separators a template leaves dangling at the start when its first fields are empty
_LEADING_SEPARATORS = " .,;:|-/"


def _tag_replacement(match: re.Match) -> str:
    name = match.group(1).lower()
    return " " if name in _BREAKING or name == "!" else ""


def clean_text(raw: object) -> str:
    """Readable text: entities unescaped, markup removed, NFKC-normalised, whitespace collapsed."""
    if raw is None:
        return ""
    text = str(raw)
    # twice: scraped data is often escaped twice ("&amp;amp;")
    text = html.unescape(html.unescape(text))
    text = _TAG.sub(_tag_replacement, text)
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    return _SPACE.sub(" ", text).strip()


def _stopword_language(language: str) -> str:
    import stopwords

    return stopwords.LANGUAGE_MAPPING.get(language, language)


@functools.lru_cache(maxsize=None)
def supported_languages() -> tuple[str, ...]:
    """Languages that have both a stopword list and a Snowball stemmer."""
    import Stemmer
    import stopwords

    return tuple(sorted(set(stopwords.AVAILABLE_LANGUAGES) & set(Stemmer.algorithms())))


def check_language(language: str) -> str:
    """The canonical language name (accepts ISO codes such as 'en'); ConfigError when unsupported."""
    name = _stopword_language(language)
    if name not in supported_languages():
        raise ConfigError(
            f"config key 'data.language' = {language!r} is not supported; "
            f"choose one of: {', '.join(supported_languages())}"
        )
    return name


class Tokenizer:
    """Lowercase → words → stopwords removed → Snowball stems, for one language."""

    def __init__(self, language: str = "english"):
        import Stemmer
        import stopwords

        self.language = check_language(language)
        # the lists also hold forms with an apostrophe ("don't"); match on our own normalisation
        self.stopwords = frozenset(w.replace("’", "'").lower() for w in stopwords.get_stopwords(self.language) if w)
        self._stemmer = Stemmer.Stemmer(self.language)

    def __call__(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower().replace("’", "'"))
        kept = [w for w in words if w not in self.stopwords]
        return self._stemmer.stemWords(kept)


@functools.lru_cache(maxsize=8)
def get_tokenizer(language: str = "english") -> Tokenizer:
    return Tokenizer(language)


def tokenize(text: str, language: str = "english") -> list[str]:
    """Tokens of already cleaned text: lowercased, stopwords removed, Snowball-stemmed."""
    return get_tokenizer(language)(text)


def template_fields(template: str) -> list[str]:
    """The field names a template such as "{title}. {genres}" refers to, in order."""
    try:
        return [name for _, name, _, _ in Formatter().parse(template) if name]
    except ValueError as exc:
        raise ConfigError(f"config key 'data.text_template' is not a valid template: {exc}") from None


def render_template(template: str, fields: Mapping[str, object]) -> str:
    """Fill a template, leaving out each empty field together with the literal text just before it.

    So "{title}. {description}" gives "Title" (not "Title. ") when the description is empty, and
    "Description" when the title is empty. Values are cleaned with `clean_text` first; list values
    (categories, tags) are joined with ", ".
    """
    out: list[str] = []
    for literal, name, _spec, _conv in Formatter().parse(template):
        if name is None:
            if out:
                out.append(literal)
            continue
        value = fields.get(name)
        if isinstance(value, (list, tuple)):
            value = ", ".join(v for v in (clean_text(x) for x in value) if v)
        else:
            value = clean_text(value)
        if value:
            out.append(literal + value)
    return clean_text("".join(out)).lstrip(_LEADING_SEPARATORS)


def clean_many(texts: Iterable[str], language: str = "english") -> tuple[list[str], list[list[str]]]:
    """(text, tokens) for each raw text."""
    tok = get_tokenizer(language)
    cleaned = [clean_text(t) for t in texts]
    return cleaned, [tok(t) for t in cleaned]
