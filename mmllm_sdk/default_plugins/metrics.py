"""The built-in metrics of ``mmllm eval``: how an answer is compared with its reference, item by item.

Each is a :class:`~mmllm_sdk.registry.Metric` registered through ``register_metrics``, as a plugin's would be:

- ``exact``: the normalised answer equals the normalised reference (lower case, punctuation and articles dropped);
- ``prefix``: the answer's first content words are the reference's (the demo's rule: "It is red." for "Red.");
- ``choice``: the option the answer picks (a letter such as "B", "(b)", "The answer is B", or the option's text) is
  the reference's;
- ``number``: the first number in the answer (digits, with thousands separators and units, or a number word up to
  twenty) equals the reference's;
- ``contains``: the normalised reference occurs in the normalised answer, as whole words;
- ``loglik-choice``: no generation: the model picks the item's option of the highest log-likelihood, scored as
  ``exact``.
"""

from __future__ import annotations

import math
import re
import string

from mmllm_sdk.hookspecs import hookimpl
from mmllm_sdk.registry import Metric

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()
# words skipped at the start of an answer before its first content word (the prefix rule)
LEADING_FILLER = frozenset(
    "a an the it its is this thats there theres are they i see answer shape object colour color in at on".split()
)
SYNONYMS = {"centre": "center", **{str(n): word for n, word in enumerate(NUMBER_WORDS)}}
_SENTENCE_END = re.compile(r"[.!?\n]")
_WORD = re.compile(r"[a-z0-9]+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation + "\u2019\u2018\u201c\u201d")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])[-+]?\.\d+")
_ANSWER_IS = re.compile(r"\b(?:answer|option|choice)(?:\s+is)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"^\(?([A-Z])(?:\)|[.:]|$)", re.IGNORECASE)


def normalise(text: str) -> str:
    """Lower case, punctuation and the articles a / an / the dropped, spaces collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def answer_words(text: str) -> list[str]:
    """The content words of an answer's first sentence: lower-cased; apostrophes dropped (``it's`` -> ``its``); only
    the text before the first ``.``, ``!``, ``?`` or newline (after leading punctuation and spaces); split into runs
    of letters and digits; ``centre`` -> ``center`` and digits -> number words; then the words of
    :data:`LEADING_FILLER` dropped from the start (only from the start)."""
    text = text.lower().replace("\u2019", "").replace("'", "").lstrip(' \t\r\n.,;:!?-"')
    first_sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    words = [SYNONYMS.get(word, word) for word in _WORD.findall(first_sentence)]
    start = 0
    while start < len(words) and words[start] in LEADING_FILLER:
        start += 1
    return words[start:]


def exact(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def prefix(prediction: str, reference: str) -> float:
    """Right when the answer's content words start with all of the reference's, in order (:func:`answer_words`):
    for "Red." ``"It is red."`` and ``"Red circle."`` are right, ``"Dark red."`` and ``"I think red"`` wrong."""
    expected = answer_words(reference)
    return float(bool(expected) and answer_words(prediction)[: len(expected)] == expected)


def chosen_letter(text: str) -> str | None:
    """The option letter an answer picks: ``"B"``, ``"(b)"``, ``"B. Paris"``, ``"The answer is B"`` -> ``"B"``."""
    found = _ANSWER_IS.search(text) or _LEADING_LETTER.search(text.strip())
    return found[1].upper() if found else None


def choice(prediction: str, reference: str) -> float:
    """A letter reference ("B", "(B)") is compared with the letter the answer picks; an option text, with the
    answer's text (exactly, or as its start: "Paris." for "Paris", "Paris, the capital" too)."""
    letter = chosen_letter(reference) if len(reference.strip(" ().:")) == 1 else None
    if letter is not None:
        return float(chosen_letter(prediction) == letter)
    answer, expected = normalise(prediction), normalise(reference)
    return float(bool(expected) and (answer == expected or answer.startswith(expected + " ")))


def first_number(text: str) -> float | None:
    """The first number in a text: ``"12 cm"`` -> 12, ``"1,000 people"`` -> 1000, ``"-3.5"`` -> -3.5,
    ``"about seven"`` -> 7 (number words up to twenty); None when there is none."""
    digits = _NUMBER.search(text)
    words = re.search(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", text.lower())
    if digits and (not words or digits.start() <= words.start()):
        return float(digits[0].replace(",", ""))
    return float(NUMBER_WORDS.index(words[1])) if words else None


def number(prediction: str, reference: str) -> float:
    expected, answer = first_number(reference), first_number(prediction)
    return float(expected is not None and answer is not None and math.isclose(answer, expected, rel_tol=1e-9))


def contains(prediction: str, reference: str) -> float:
    expected = normalise(reference)
    return float(bool(expected) and f" {expected} " in f" {normalise(prediction)} ")


METRICS = {
    "exact": Metric(exact, "is right when the normalised answer equals the reference", labels=True),
    "prefix": Metric(prefix, "is right when the answer's first content words are the reference's", labels=True),
    "choice": Metric(choice, "is right when the answer picks the reference's option (letter or text)", labels=True),
    "number": Metric(number, "is right when the answer's first number equals the reference's"),
    "contains": Metric(contains, "is right when the reference occurs in the answer, as whole words"),
    "loglik-choice": Metric(
        exact, "picks the option of the highest log-likelihood (no generation)", by_likelihood=True, labels=True
    ),
}


@hookimpl
def register_metrics(register):
    for name, metric in METRICS.items():
        register(name, metric)
