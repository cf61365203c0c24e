"""A seeded synthetic multitask generator: the embedded default data.

Every example is a pure function of ``(seed, task, split, index)``, so any client
can build its own partition without talking to anyone, and every run with the
same seed sees the same data.

The tasks are chosen to make the federated setting meaningful:

* distinct input distributions (numbers, words, countries, reviews, dialogues,
  relation triples, question pairs), so that clustering by input works;
* families that share one input distribution but map it differently
  (``copy`` / ``reverse`` / ``sort_chars`` on words, ``sort_num`` / ``max`` on
  digit lists), so that one shared adapter suffers interference;
* short exact answers (scored by exact match) and short generated sentences
  (scored by ROUGE);
* a ``prefix_free`` mode that drops the task keyword, so that tasks of one
  family can only be told apart by what the model learns, not by the prompt.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedrouter_app.data.example import Example, MetricKind
from fedrouter_app.seeding import python_rng

WORDS = [
    "apple",
    "bread",
    "candle",
    "dragon",
    "eagle",
    "forest",
    "garden",
    "harbor",
    "island",
    "jacket",
    "kitten",
    "lemon",
    "marble",
    "needle",
    "orange",
    "pepper",
    "rabbit",
    "silver",
    "tunnel",
    "velvet",
    "window",
    "yellow",
    "anchor",
    "basket",
    "cactus",
    "donkey",
    "engine",
    "falcon",
    "guitar",
    "hammer",
    "insect",
    "jungle",
    "ladder",
    "magnet",
    "napkin",
    "oyster",
    "pencil",
    "quartz",
    "rocket",
    "saddle",
    "tomato",
    "violin",
    "walnut",
    "bottle",
    "castle",
    "desert",
    "feather",
    "ginger",
    "helmet",
    "kettle",
    "lizard",
    "meadow",
    "nickel",
    "parrot",
    "planet",
    "river",
    "shadow",
    "spider",
    "ticket",
    "turtle",
    "wallet",
    "winter",
    "zipper",
]

COUNTRIES = {
    "france": "paris",
    "spain": "madrid",
    "italy": "rome",
    "germany": "berlin",
    "poland": "warsaw",
    "greece": "athens",
    "norway": "oslo",
    "sweden": "stockholm",
    "finland": "helsinki",
    "austria": "vienna",
    "portugal": "lisbon",
    "ireland": "dublin",
    "egypt": "cairo",
    "kenya": "nairobi",
    "japan": "tokyo",
    "china": "beijing",
    "india": "new delhi",
    "peru": "lima",
    "chile": "santiago",
    "cuba": "havana",
    "canada": "ottawa",
    "mexico": "mexico city",
    "brazil": "brasilia",
    "russia": "moscow",
    "turkey": "ankara",
    "iran": "tehran",
    "iraq": "baghdad",
    "nepal": "kathmandu",
    "ghana": "accra",
    "mali": "bamako",
    "hungary": "budapest",
    "belgium": "brussels",
    "denmark": "copenhagen",
    "latvia": "riga",
    "estonia": "tallinn",
    "croatia": "zagreb",
    "thailand": "bangkok",
    "vietnam": "hanoi",
    "colombia": "bogota",
    "argentina": "buenos aires",
}

_GOOD = ["great", "lovely", "tasty", "friendly", "superb", "delightful", "fresh", "excellent", "warm", "charming"]
_BAD = ["awful", "cold", "bland", "rude", "terrible", "stale", "dirty", "boring", "noisy", "disappointing"]
_SUBJECTS = ["the food", "the staff", "the soup", "the room", "the service", "the film", "the music", "the coffee"]
_REVIEW_TEMPLATES = (
    "{s} was {a}",
    "{s} was {a} and {b}",
    "i found {s} {a}",
    "honestly {s} felt {a}",
    "{s} is always {a}",
)

NAMES = ["anna", "ben", "carla", "david", "emma", "felix", "grace", "hugo", "iris", "jonas", "kira", "liam"]
_PLACES = ["cafe", "park", "library", "station", "museum", "market", "beach", "gym"]
_TIMES = ["noon", "six", "seven", "eight", "nine", "ten"]
_ACTIVITIES = {"meet": "meet", "eat": "have lunch", "study": "study", "run": "go running"}
_DIALOGUE_TEMPLATES = (
    "{a}: shall we {act} at the {place} at {time}? {b}: yes, see you at {time}.",
    "{a}: want to {act} at {time}? {b}: ok, where? {a}: the {place}.",
    "{b}: are you free at {time}? {a}: yes, let us {act} at the {place}.",
)

_RELATIONS = {
    "lives in": ("lives in", ["berlin", "oslo", "lima", "rome", "cairo", "tokyo", "paris", "riga"]),
    "works as": ("works as a", ["baker", "pilot", "nurse", "farmer", "painter", "teacher", "driver"]),
    "owns": ("owns a", ["cat", "dog", "horse", "boat", "bike", "car", "parrot"]),
    "likes": ("likes", ["tea", "jazz", "chess", "football", "poetry", "rain", "soup"]),
}

_ATTRIBUTE_QUESTIONS = {
    "age": ("how old is {n}?", "what is the age of {n}?", "what age is {n}?"),
    "home": ("where does {n} live?", "in which city does {n} live?", "where is the home of {n}?"),
    "job": ("what does {n} do for work?", "what is the job of {n}?", "how does {n} earn money?"),
    "pet": ("does {n} have a pet?", "what pet does {n} own?", "which animal does {n} keep?"),
}


@dataclass(frozen=True)
class SyntheticTask:
    """One task of the generator.

    Attributes
    ----------
    name : str
        Task id used in configs and results.
    keyword : str
        Word put in front of the input unless the generator is prefix-free.
    family : str
        Input distribution; tasks of one family share inputs.
    metric : {"exact", "rouge"}
        How generated answers are scored.
    make : callable
        ``make(rng) -> (input_text, answer)``.
    """

    name: str
    keyword: str
    family: str
    metric: MetricKind
    make: Callable[[random.Random], tuple[str, str]]


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _digits(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]


def _review(rng: random.Random) -> tuple[str, str]:
    positive = rng.random() < 0.5
    lexicon = _GOOD if positive else _BAD
    a, b = rng.sample(lexicon, 2)
    text = rng.choice(_REVIEW_TEMPLATES).format(s=rng.choice(_SUBJECTS), a=a, b=b)
    return text, "positive" if positive else "negative"


def _dialogue(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    act = rng.choice(sorted(_ACTIVITIES))
    place, time = rng.choice(_PLACES), rng.choice(_TIMES)
    text = rng.choice(_DIALOGUE_TEMPLATES).format(a=a, b=b, act=act, place=place, time=time)
    return text, f"{a} and {b} {_ACTIVITIES[act]} at the {place} at {time}"


def _triples(rng: random.Random) -> tuple[str, str]:
    subject = rng.choice(NAMES)
    relations = rng.sample(sorted(_RELATIONS), rng.randint(1, 2))
    facts = [(rel, rng.choice(_RELATIONS[rel][1])) for rel in relations]
    data = " ; ".join(f"{subject} | {rel} | {obj}" for rel, obj in facts)
    phrases = [f"{_RELATIONS[rel][0]} {obj}" for rel, obj in facts]
    return data, f"{subject} " + " and ".join(phrases)


def _question_pair(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    first_attr = rng.choice(sorted(_ATTRIBUTE_QUESTIONS))
    duplicate = rng.random() < 0.5
    if duplicate:
        q1, q2 = rng.sample(_ATTRIBUTE_QUESTIONS[first_attr], 2)
    else:
        other = rng.choice([a for a in sorted(_ATTRIBUTE_QUESTIONS) if a != first_attr])
        q1 = rng.choice(_ATTRIBUTE_QUESTIONS[first_attr])
        q2 = rng.choice(_ATTRIBUTE_QUESTIONS[other])
    return f"{q1.format(n=name)} | {q2.format(n=name)}", "yes" if duplicate else "no"


def _count(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    letter = rng.choice(sorted(set(word)))
    return f"{letter} in {word}", str(word.count(letter))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"{a} {b}", str(a + b)


def _copy(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, word


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, word[::-1]


def _sort_chars(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, "".join(sorted(word))


def _sort_num(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return " ".join(map(str, digits)), " ".join(map(str, sorted(digits)))


def _max(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return " ".join(map(str, digits)), str(max(digits))


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(COUNTRIES))
    return country, COUNTRIES[country]


TASKS: dict[str, SyntheticTask] = {
    task.name: task
    for task in (
        SyntheticTask("copy", "repeat the word", "words", "exact", _copy),
        SyntheticTask("reverse", "spell backwards", "words", "exact", _reverse),
        SyntheticTask("sort_chars", "sort the letters of", "words", "exact", _sort_chars),
        SyntheticTask("sort_num", "sort the numbers", "digits", "exact", _sort_num),
        SyntheticTask("max", "largest of", "digits", "exact", _max),
        SyntheticTask("add", "add up", "number_pair", "exact", _add),
        SyntheticTask("capital", "capital city of", "countries", "exact", _capital),
        SyntheticTask("count", "count the letter", "letter_in_word", "exact", _count),
        SyntheticTask("sentiment", "review sentiment:", "reviews", "exact", _review),
        SyntheticTask("paraphrase", "same question?", "question_pairs", "exact", _question_pair),
        SyntheticTask("data_to_text", "describe the data:", "triples", "rouge", _triples),
        SyntheticTask("summarize", "summarize the chat:", "dialogues", "rouge", _dialogue),
    )
}


def _first(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, word[0]


def _last(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, word[-1]


def _length(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return word, str(len(word))


def _next(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 98)
    return str(n), str(n + 1)


def _min(rng: random.Random) -> tuple[str, str]:
    digits = _digits(rng)
    return " ".join(map(str, digits)), str(min(digits))


def _name(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    return name, name


# Tasks that only exist to pre-train the embedded base model: they teach it the
# answer format (``... = answer</s>``) without teaching any task above.
PRETRAIN_TASKS: dict[str, SyntheticTask] = {
    task.name: task
    for task in (
        SyntheticTask("first", "first", "words", "exact", _first),
        SyntheticTask("last", "last", "words", "exact", _last),
        SyntheticTask("length", "length", "words", "exact", _length),
        SyntheticTask("next", "next", "number", "exact", _next),
        SyntheticTask("min", "min", "digits", "exact", _min),
        SyntheticTask("name", "name", "names", "exact", _name),
    )
}


def task_names() -> list[str]:
    """Names of the tasks the generator offers, in a fixed order."""
    return list(TASKS)


def make_example(
    seed: int,
    task: str,
    split: str,
    index: int,
    *,
    prefix_free: bool = False,
    tasks: dict[str, SyntheticTask] = TASKS,
) -> Example:
    """Return example ``index`` of ``task`` in ``split``.

    Parameters
    ----------
    seed : int
        Run seed.
    task : str
        Task name (a key of ``tasks``).
    split : str
        ``"train"``, ``"test"`` or any other stream name; streams are independent.
    index : int
        Position in the stream.
    prefix_free : bool
        Drop the task keyword from the instruction.
    tasks : dict
        Task table to draw from (the default is :data:`TASKS`).
    """
    spec = tasks[task]
    text, answer = spec.make(python_rng(seed, "synthetic", task, split, index))
    instruction = text if prefix_free else f"{spec.keyword} {text}"
    return Example(task=task, instruction=instruction, response=answer)


def make_examples(
    seed: int,
    task: str,
    split: str,
    indices: Sequence[int] | range,
    *,
    prefix_free: bool = False,
    tasks: dict[str, SyntheticTask] = TASKS,
) -> list[Example]:
    """Return the examples at ``indices`` of one task's stream."""
    return [make_example(seed, task, split, i, prefix_free=prefix_free, tasks=tasks) for i in indices]
