"""The vocabulary of the synthetic world the zoo models are trained on.

Why a closed world: every task the workbench analyses (IOI, induction, greater-than,
factual recall) needs prompts whose answers are single tokens and whose facts the model
has certainly seen. Keeping every word here, as one whitespace-free token, lets the
word-level tokenizer (``tokenizer.py``) map one word to one token, so word positions and
token positions coincide and "answer is one token" holds by construction.

Rules for every word in this module:
- a single run of letters or digits (no spaces, hyphens or apostrophes), so the
  ``Whitespace`` pre-tokenizer never splits it;
- unique across lists where the lists must not overlap (checked in ``_check_world``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Country:
    """One country and its facts; each field is a single word/token."""

    name: str
    """The country, e.g. ``France``."""
    capital: str
    """Its capital city, e.g. ``Paris``."""
    language: str
    """Its language, unique across countries so multi-hop recall is well defined."""
    continent: str
    """One of :data:`CONTINENTS`."""


NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Sarah", "James", "Emma", "David", "Anna", "Michael",
    "Laura", "Daniel", "Kate", "Paul", "Lisa", "Mark", "Susan", "Peter", "Rachel", "Thomas",
    "Linda", "George", "Helen", "Frank", "Julia", "Henry", "Grace", "Oscar", "Nina", "Victor",
    "Clara", "Simon", "Ruth", "Adam", "Emily", "Jack", "Sophie", "Tom", "Lucy", "Max",
)
"""First names for IOI and filler text."""

PLACES: tuple[str, ...] = (
    "store", "park", "school", "market", "garden", "office", "library", "station", "beach",
    "kitchen", "hospital", "restaurant", "museum", "church", "cafe", "bank", "farm", "river",
    "forest", "theater",
)
"""Places (used after ``the``)."""

OBJECTS: tuple[str, ...] = (
    "drink", "book", "ball", "letter", "ring", "bag", "key", "gift", "cake", "pen", "hat",
    "flower", "ticket", "bottle", "coin", "map", "cup", "phone", "basket", "candle",
)
"""Objects that are handed from one person to another."""

GIVE_VERBS: tuple[str, ...] = (
    "gave", "handed", "brought", "passed", "sent", "offered", "threw", "showed",
)
"""Past-tense transfer verbs ("X gave a Y to Z")."""

MOTION_VERBS: tuple[str, ...] = (
    "went", "walked", "ran", "drove", "came", "returned", "moved",
)
"""Past-tense motion verbs used with ``to the PLACE``."""

OTHER_VERBS: tuple[str, ...] = (
    "saw", "met", "called", "helped", "visited", "liked", "found", "bought", "lost", "made",
    "took", "kept", "painted", "cleaned", "reached", "arrived", "decided", "worked", "played",
    "stayed", "talked", "waited", "laughed", "slept", "read", "wrote", "opened", "closed",
)
"""Other past-tense verbs for filler sentences."""

ADJECTIVES: tuple[str, ...] = (
    "long", "short", "hard", "quiet", "busy", "new", "famous", "strange", "pleasant", "cruel",
    "peaceful", "great", "terrible", "early", "late", "full", "empty", "nice", "large", "little",
)
"""Adjectives for filler sentences (``The PLACE was ADJ``)."""

EVENT_NOUNS: tuple[str, ...] = (
    "war", "reign", "expedition", "drought", "journey", "trial", "strike", "project",
    "festival", "famine", "siege", "voyage", "rebellion", "treaty",
)
"""Nouns that last from one year to another (greater-than task)."""

FUNCTION_WORDS: tuple[str, ...] = (
    "the", "The", "a", "an", "and", "to", "of", "in", "at", "on", "by", "from", "for", "with",
    "is", "was", "were", "are", "it", "its", "it", "he", "she", "they", "He", "She", "They",
    "then", "Then", "When", "when", "While", "After", "Afterwards", "Once", "Later", "so",
    "but", "which", "where", "that", "this", "there", "There", "year", "years", "until",
    "had", "has", "have", "day", "days", "morning", "evening", "night", "friend", "friends",
    "Friends", "together", "long", "give", "decided", "got", "over", "ended", "started",
    "began", "lasted", "went", "on", "country", "city", "capital", "people", "People",
    "speak", "spoken", "language", "lies", "located", "continent", "main", "called", "also",
    "We", "we", "Her", "His", "her", "his", "flew", "lives", "live", "In", "some", "very",
    "In", "all", "who", "what", "What", "As", "as", "everyone", "known", "home", "name",
    "named", "official", "government", "seat", "be", "being", "many", "not", "one",
    "working", "At", "Many", "thanked",
)
"""Glue words of the grammar and task templates (duplicates are removed on use)."""

CONTINENTS: tuple[str, ...] = ("Europe", "Asia", "Africa", "America", "Oceania")
"""Continents (single words)."""

COUNTRIES: tuple[Country, ...] = (
    Country("France", "Paris", "French", "Europe"),
    Country("Spain", "Madrid", "Spanish", "Europe"),
    Country("Germany", "Berlin", "German", "Europe"),
    Country("Italy", "Rome", "Italian", "Europe"),
    Country("Portugal", "Lisbon", "Portuguese", "Europe"),
    Country("Greece", "Athens", "Greek", "Europe"),
    Country("Poland", "Warsaw", "Polish", "Europe"),
    Country("Sweden", "Stockholm", "Swedish", "Europe"),
    Country("Norway", "Oslo", "Norwegian", "Europe"),
    Country("Finland", "Helsinki", "Finnish", "Europe"),
    Country("Denmark", "Copenhagen", "Danish", "Europe"),
    Country("Netherlands", "Amsterdam", "Dutch", "Europe"),
    Country("Hungary", "Budapest", "Hungarian", "Europe"),
    Country("Romania", "Bucharest", "Romanian", "Europe"),
    Country("Russia", "Moscow", "Russian", "Europe"),
    Country("Ukraine", "Kyiv", "Ukrainian", "Europe"),
    Country("Czechia", "Prague", "Czech", "Europe"),
    Country("Iceland", "Reykjavik", "Icelandic", "Europe"),
    Country("Albania", "Tirana", "Albanian", "Europe"),
    Country("Japan", "Tokyo", "Japanese", "Asia"),
    Country("China", "Beijing", "Chinese", "Asia"),
    Country("Korea", "Seoul", "Korean", "Asia"),
    Country("Thailand", "Bangkok", "Thai", "Asia"),
    Country("Vietnam", "Hanoi", "Vietnamese", "Asia"),
    Country("Indonesia", "Jakarta", "Indonesian", "Asia"),
    Country("Iran", "Tehran", "Persian", "Asia"),
    Country("Israel", "Jerusalem", "Hebrew", "Asia"),
    Country("Mongolia", "Ulaanbaatar", "Mongolian", "Asia"),
    Country("Nepal", "Kathmandu", "Nepali", "Asia"),
    Country("Armenia", "Yerevan", "Armenian", "Asia"),
    Country("Turkey", "Ankara", "Turkish", "Asia"),
    Country("Pakistan", "Islamabad", "Urdu", "Asia"),
    Country("Egypt", "Cairo", "Arabic", "Africa"),
    Country("Kenya", "Nairobi", "Swahili", "Africa"),
    Country("Somalia", "Mogadishu", "Somali", "Africa"),
    Country("Madagascar", "Antananarivo", "Malagasy", "Africa"),
    Country("Rwanda", "Kigali", "Kinyarwanda", "Africa"),
    Country("Peru", "Lima", "Quechua", "America"),
    Country("Paraguay", "Asuncion", "Guarani", "America"),
    Country("Samoa", "Apia", "Samoan", "Oceania"),
    Country("Fiji", "Suva", "Fijian", "Oceania"),
    Country("Tonga", "Nukualofa", "Tongan", "Oceania"),
)
"""Countries with capital, language and continent (all single tokens)."""

RANDOM_WORDS: tuple[str, ...] = (
    "cat", "dog", "horse", "cow", "sheep", "goat", "pig", "lion", "tiger", "bear", "wolf",
    "fox", "deer", "rabbit", "mouse", "eagle", "owl", "duck", "goose", "swan", "frog", "snake",
    "whale", "shark", "fish", "red", "blue", "green", "yellow", "black", "white", "orange",
    "purple", "pink", "brown", "grey", "apple", "banana", "cherry", "grape", "lemon", "melon",
    "peach", "pear", "plum", "bread", "cheese", "butter", "honey", "rice", "soup", "salt",
    "sugar", "tea", "coffee", "milk", "tree", "leaf", "stone", "rock", "sand", "snow", "rain",
    "wind", "cloud", "storm", "sun", "moon", "star", "sky", "hill", "lake", "sea", "ocean",
    "island", "valley", "mountain", "field", "grass", "wood", "fire", "ice", "chair", "table",
    "door", "window", "wall", "roof", "floor", "bed", "lamp", "clock", "mirror", "box", "rope",
    "wheel", "boat", "car", "train", "plane", "bridge", "road", "tower", "castle", "hammer",
    "knife", "spoon", "fork", "plate", "glass", "paper", "ink", "tall", "small", "big", "quick",
    "slow", "bright", "dark", "soft", "warm", "cold", "old", "young", "happy", "sad", "loud",
    "rich", "poor", "music", "dance", "song", "poem", "story", "dream", "idea", "question",
    "answer", "number", "silver", "gold", "iron", "copper", "cotton", "silk", "wool", "leather",
    "pepper", "onion", "carrot", "potato", "tomato", "bean", "corn", "wheat", "nut", "egg",
)
"""Dedicated pool for induction sequences: never used by any other template."""

YEAR_TOKENS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(100))
"""Two-digit year halves: a year 1732 is written as the two tokens ``17 32``."""

PUNCTUATION: tuple[str, ...] = (".", ",")
"""Punctuation tokens; text always separates them by spaces (``" , "``, ``" ."``)."""


def _unique(words: tuple[str, ...] | list[str]) -> list[str]:
    """Deduplicate while keeping first-seen order (deterministic vocab ids)."""
    seen: set[str] = set()
    out: list[str] = []
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def country_words() -> list[str]:
    """All country names, capitals, languages and continents."""
    words: list[str] = []
    for c in COUNTRIES:
        words += [c.name, c.capital, c.language]
    return words + list(CONTINENTS)


def all_words() -> list[str]:
    """Every word of the world in a fixed order (the tokenizer's vocabulary order)."""
    return _unique(
        list(PUNCTUATION) + list(FUNCTION_WORDS) + list(NAMES) + list(PLACES) + list(OBJECTS)
        + list(GIVE_VERBS) + list(MOTION_VERBS) + list(OTHER_VERBS) + list(ADJECTIVES)
        + list(EVENT_NOUNS) + country_words() + list(RANDOM_WORDS) + list(YEAR_TOKENS)
    )


def _check_world() -> None:
    """Fail at import if a list breaks the single-token or disjointness rules."""
    for w in all_words():
        if w in PUNCTUATION:
            continue
        if not w.isalnum():
            raise ValueError(f"world word {w!r} is not a single alphanumeric token")
    task_words = set(NAMES) | set(country_words()) | set(PLACES) | set(OBJECTS)
    task_words |= set(FUNCTION_WORDS) | set(EVENT_NOUNS) | set(ADJECTIVES)
    task_words |= set(GIVE_VERBS) | set(MOTION_VERBS) | set(OTHER_VERBS)
    clash = task_words & set(RANDOM_WORDS)
    if clash:
        raise ValueError(f"RANDOM_WORDS overlaps other lists: {sorted(clash)}")
    if len(set(RANDOM_WORDS)) != len(RANDOM_WORDS):
        raise ValueError("RANDOM_WORDS has duplicates")
    langs = [c.language for c in COUNTRIES]
    if len(set(langs)) != len(langs):
        raise ValueError("languages must be unique per country (multi-hop recall)")
    names = [c.name for c in COUNTRIES] + [c.capital for c in COUNTRIES]
    if len(set(names)) != len(names):
        raise ValueError("country and capital names must be unique")
    for c in COUNTRIES:
        if c.continent not in CONTINENTS:
            raise ValueError(f"unknown continent {c.continent!r} for {c.name}")


_check_world()
