"""Sentence templates of the synthetic corpus, split into training and held-out sets.

Why a separate module: the templates are data, and the train/held-out split is the one
thing that makes the zoo's accuracy numbers honest. Held-out templates are phrasings the
models never see during training, written only with words that do occur in training text
(``tests/test_zoo_corpus.py`` checks both properties).

Every template is a space-separated sequence of single-token words; slots are written
``{X}`` and are filled with one word each, so the word index equals the token index.
"""

from __future__ import annotations

# --- Indirect object identification -------------------------------------------------
# {A} and {B} are the two names in first-mention order, {S} is the second mention of the
# subject, {P} a place and {O} an object. The prompt ends right before the indirect object.
IOI_OPENERS: tuple[str, ...] = (
    "When {A} and {B} went to the {P} ,",
    "Then , {A} and {B} had a long day at the {P} .",
    "After {A} and {B} arrived at the {P} ,",
    "While {A} and {B} were working at the {P} ,",
    "{A} and {B} went to the {P} .",
    "Later , {A} and {B} found a {O} at the {P} .",
    "Friends {A} and {B} walked to the {P} ,",
    "In the morning , {A} and {B} came to the {P} .",
    "At night , {A} and {B} were at the {P} ,",
    "{A} met {B} at the {P} .",
    "Afterwards , {A} and {B} went to the {P} .",
    "Once {A} and {B} reached the {P} ,",
    "{A} and {B} were at the {P} ,",
    "After a day at the {P} , {A} and {B} stayed together .",
)
"""How the two names are introduced; ends with ``,`` or ``.``."""
IOI_CONNECTORS: dict[str, tuple[str, ...]] = {
    ",": ("", "and", "so", "then"),
    ".": ("", "Then", "Later ,"),
}
"""What may follow an opener ending in ``,`` / ``.`` before the subject's second mention."""
IOI_ENDINGS: tuple[str, ...] = (
    "{S} {V} a {O} to",
    "{S} {V} the {O} to",
    "{S} decided to give a {O} to",
)
"""The second mention of the subject and the transfer; the prompt ends before the IO."""


def _ioi_frames() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """All opener x connector x ending frames, split 4:1 into train and held-out.

    Held-out frames are combinations never trained on; every part occurs in training.
    """
    train, held = [], []
    for i, op in enumerate(IOI_OPENERS):
        for j, conn in enumerate(IOI_CONNECTORS[op[-1]]):
            for k, end in enumerate(IOI_ENDINGS):
                frame = " ".join(x for x in (op, conn, end) if x)
                (held if (i + 2 * j + 3 * k) % 5 == 0 else train).append(frame)
    # A held-out frame inside a training frame ("X ..." within "Afterwards , X ...") was
    # seen in training after all: move it to the training side.
    seen = [h for h in held if any(h in t for t in train)]
    return tuple(train + seen), tuple(h for h in held if h not in seen)


IOI_TRAIN, IOI_HELDOUT = _ioi_frames()
"""IOI frames: {A} and {B} are the names in first-mention order, {S} the subject's second
mention, {P} a place, {O} an object, {V} a transfer verb (``world.GIVE_VERBS``)."""

# --- Greater-than -------------------------------------------------------------------
# {N} an event noun, {C} the century token ("17"), {Y} the start year token ("32").
GT_FRAMES_TRAIN: tuple[str, ...] = (
    "The {N} lasted from the year {C} {Y} to the year {C}",
    "The {N} started in the year {C} {Y} and ended in the year {C}",
    "The {N} began in {C} {Y} and it was over by {C}",
    "The {N} lasted from {C} {Y} until {C}",
    "In the year {C} {Y} the {N} began , and it ended in the year {C}",
    "The {N} went on from {C} {Y} to {C}",
)
GT_FRAMES_HELDOUT: tuple[str, ...] = (
    "The {N} went on from the year {C} {Y} until the year {C}",
)
GT_NOUNS_TRAIN: tuple[str, ...] = (
    "war", "reign", "expedition", "journey", "trial", "strike", "project", "festival",
    "famine", "rebellion", "treaty",
)
GT_NOUNS_HELDOUT: tuple[str, ...] = ("drought", "siege", "voyage")

# --- Factual recall -----------------------------------------------------------------
# {country}, {capital}, {language}, {continent}; the answer slot is always last.
FACT_TRAIN: dict[str, tuple[str, ...]] = {
    "capital": (
        "The capital of {country} is {capital}",
        "The capital city of {country} is {capital}",
        "{country} has its capital in {capital}",
        "In {country} , the capital is {capital}",
        "We flew to {country} and visited its capital , {capital}",
        "The main city of {country} is its capital {capital}",
    ),
    "language": (
        "People in {country} speak {language}",
        "In {country} , people speak {language}",
        "The language of {country} is {language}",
        "{country} is a country where people speak {language}",
    ),
    "continent": (
        "{country} is in {continent}",
        "{country} is a country in {continent}",
        "{country} lies in {continent}",
    ),
    "multihop": (
        "The capital of the country where people speak {language} is {capital}",
        "In the country where people speak {language} , the capital is {capital}",
    ),
}
FACT_HELDOUT: dict[str, tuple[str, ...]] = {
    "capital": (
        "The official capital of {country} is {capital}",
        "In {country} , the capital city is {capital}",
        "The capital of the country {country} is {capital}",
    ),
    "language": (
        "The official language of {country} is {language}",
        "Many people in {country} speak {language}",
    ),
    "continent": (
        "The country {country} is in {continent}",
        "{country} is a country that lies in {continent}",
    ),
    "multihop": (
        "The official capital of the country where people speak {language} is {capital}",
        "The capital of the country where {language} is spoken is {capital}",
    ),
}
# Training-only statements that are not prompts (answer not last) but teach the facts
# from the other direction and cover words used by held-out phrasings.
FACT_EXTRA_TRAIN: tuple[str, ...] = (
    "{language} is spoken in {country}",
    "{capital} is the capital of {country}",
    "{capital} is a city in {continent}",
)

# --- Filler grammar -----------------------------------------------------------------
# Slots: {N} {N2} names, {P} place, {O} object, {GV} give verb, {MV} motion verb,
# {OV} other verb, {ADJ} adjective, {EV} event noun, {PR} pronoun, {CAP} capital,
# {CTRY} country.
FILLER: tuple[str, ...] = (
    "{N} {MV} to the {P}",
    "{N} {OV} {N2} at the {P}",
    "The {P} was {ADJ}",
    "The {EV} was {ADJ}",
    "The {EV} was {ADJ} and it lasted many years",
    "Afterwards , {N} {MV} to the {P}",
    "Once {N} reached the {P} , {PR} {OV} a {O}",
    "{N} threw the {O} , so {N2} laughed",
    "Her friend lives in {CAP}",
    "His friend lives in {CTRY}",
    "Many people live in {CAP}",
    "The official {O} was {ADJ}",
    "{N} and {N2} were friends",
    "In the morning , {N} {OV} a {O}",
    "At night , {N} {MV} home",
    "The {P} was {ADJ} , so {N} {MV} to the {P2}",
    "{N} had a {ADJ} day at the {P}",
    "The {O} that {N} found was {ADJ}",
    "{N} found the {O} at the {P} and kept it",
    "{N} called {N2} in the evening",
    "There was a {O} in the {P}",
    "The name of the {O} was known to everyone",
    "The seat of government is in the capital",
    "{N} went on to the {P} until the evening",
    "{N} visited {CAP} , the main city of {CTRY}",
)

# Name repetition: copying the one name in context is right. This is the first-order signal
# that starts name-copying heads; IOI alone gives none, since naive copying there favours
# the subject (mentioned twice) over the indirect object.
NAME_COPY: tuple[str, ...] = (
    "{N} went to the {P} , and then {N} went home",
    "{N} found a {O} at the {P} . Later , {N} lost it",
    "When {N} came to the {P} , {N} {OV} a {O}",
    "{N} and {N2} met at the {P} . {N2} liked {N}",
    "{N} {GV} a {O} to {N2} , and {N2} {GV} a {O2} to {N}",
    "Then , {N} helped {N2} , and {N2} thanked {N}",
    "{N} called {N2} , and then {N2} called {N}",
    "The {O} was for {N} , so {N2} {GV} it to {N}",
)
