"""Off-domain sentences, generated at training time, for the read-back's off-domain head.

The read-back (docs/TEXT_ENCODER.md § Read-back) warns the operator when a caption describes
nothing the robot knows ("draw a cat", "what is the weather like", "asdf"). Its off-domain head
learns that from these sentences: everyday and other-domain English from templates over a word
list of its own (food, animals, vehicles, weather, office, travel, home, art, questions to an
assistant), plus junk an operator's keyboard produces (keyboard mash, digits, one-word lines).

Two rules keep the head honest:

- No generated sentence states a rescue attribute through a person: the vocabulary has no
  person, garment, terrain, pose, position or helmet words of the caption grammar
  (`train.data.captions`, `train.data.phrasing`); colours appear only on things ("a red kettle"),
  so "red" alone is not read as a person's clothing and a colour-only command ("anyone in
  yellow?") still has a person or garment to anchor it. A test checks the vocabulary.
- The evaluation list, `off_domain_eval.txt` beside this module, was written by hand and is never
  produced here (a test draws many sentences and proves no overlap), so the off-domain figure
  measures generalisation to unseen sentences, not recall of a template.

Pure function of the numpy generator it is given: the trainer draws with (seed, step), so the
schedule stays a pure function of (seed, step) and resume stays exact.
"""

from __future__ import annotations

import re
from importlib import resources

import numpy as np

EVAL_FILE = "off_domain_eval.txt"

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black", "pink",
           "brown", "grey", "silver", "golden", "striped", "spotted")  # fmt: skip
THINGS = (
    "kettle", "teapot", "umbrella", "bicycle", "guitar", "lamp", "sofa", "armchair", "bookcase",
    "laptop", "keyboard", "telephone", "clock", "candle", "vase", "bottle", "suitcase",
    "backpack", "notebook", "pencil", "envelope", "balloon", "kite", "sailboat", "van", "bus",
    "tram", "motorbike", "scooter", "truck", "airplane", "rocket", "submarine", "tractor",
    "piano", "drum", "trumpet", "mug", "plate", "spoon", "fork", "saucepan", "fridge",
    "toaster", "blender", "television", "radio", "camera", "painting", "poster", "carpet",
    "curtain", "pillow", "blanket", "teddy bear", "football", "tennis racket", "skateboard",
    "birthday cake", "sandwich", "pizza", "salad", "apple", "pear", "lemon", "cucumber",
    "carrot", "pumpkin", "mushroom", "cupcake", "doughnut", "burger", "omelette", "pie",
)  # fmt: skip
ANIMALS = (
    "dog", "puppy", "cat", "rabbit", "hamster", "parrot", "goldfish", "horse", "cow", "pig",
    "sheep", "goat", "chicken", "goose", "swan", "penguin", "tiger", "lion", "zebra", "giraffe",
    "monkey", "panda", "koala", "kangaroo", "squirrel", "deer", "bear", "wolf", "frog",
    "turtle", "butterfly", "ladybird", "spider", "whale", "shark", "octopus", "crab", "eagle",
)  # fmt: skip
PLACES = (
    "kitchen", "living room", "bedroom", "office", "classroom", "library", "bakery", "cafe",
    "restaurant", "supermarket", "museum", "cinema", "theatre", "airport", "station", "harbour",
    "zoo", "farm", "garden", "balcony", "attic", "garage", "hotel lobby", "bank", "post office",
    "gym", "stadium", "concert hall", "market", "bookshop",
)  # fmt: skip
SCENERY = (
    "a mountain lake", "a city skyline", "a quiet village", "an old harbour", "a busy market",
    "a sunflower field", "a vineyard", "a pine forest", "a tropical island", "a desert canyon",
    "a frozen waterfall", "a lavender field", "a castle ruin", "a rooftop garden", "a night sky",
)  # fmt: skip
VERBS_THING = ("fix", "clean", "buy", "sell", "borrow", "wrap", "paint", "move", "find",
               "return", "charge", "unpack", "order", "polish", "replace")  # fmt: skip
VERBS_ANIMAL = ("sleeping", "eating", "playing", "hiding", "jumping", "swimming", "running",
                "yawning", "climbing", "chasing a ball")  # fmt: skip
STYLES = (
    "an oil painting", "a pencil sketch", "a photo", "a cartoon", "a watercolour", "a mosaic",
    "a pixel art picture", "a poster", "a sculpture", "a comic strip",
)  # fmt: skip
TOPICS = (
    "the weather", "the news", "the football results", "the stock market", "my calendar",
    "the train times", "the recipe", "the meeting notes", "the shopping list", "the exam",
    "the election", "the budget", "my emails", "the timetable", "the holiday plans",
    "the tax return", "the playlist", "the quiz", "the homework", "the broadband",
)  # fmt: skip
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
        "tomorrow", "tonight", "next week", "this evening", "at noon")  # fmt: skip
FOODS = ("pasta", "rice", "soup", "curry", "bread", "cheese", "biscuits", "tea", "coffee",
         "juice", "chocolate", "ice cream", "porridge", "dumplings", "lasagne")  # fmt: skip
NATURE = ("the lake", "the forest", "the hills", "the mountains", "the park", "the sea",
          "the orchard", "the valley", "the cliffs", "the vineyard", "the pond", "the canal",
          "the rooftops", "the harbour", "the bay")  # fmt: skip
TIMES = ("at dawn", "at night", "at midnight", "in the morning", "after lunch", "at sunset",
         "before breakfast", "at half past six", "at a quarter to nine", "around noon")  # fmt: skip
CITIES = ("paris", "berlin", "leeds", "glasgow", "madrid", "oslo", "boston", "lisbon", "cardiff",
          "dublin", "rome", "vienna")  # fmt: skip
NAMES = ("anna", "tom", "grandma", "the landlord", "my boss", "the plumber", "dad", "sophie",
         "the dentist", "my brother", "the bank", "the school")  # fmt: skip
GADGETS = ("phone", "laptop", "printer", "router", "tablet", "headphones", "smartwatch", "car",
           "dishwasher", "washing machine", "boiler", "doorbell")  # fmt: skip
PROBLEMS = (
    "keeps crashing", "will not turn on", "is making a strange noise", "needs an update",
    "ran out of battery", "is too slow", "lost its connection", "is leaking again",
)  # fmt: skip
VEHICLES = ("train", "bus", "ferry", "flight", "coach", "tram", "night bus")
WORDS = (
    "hello", "hi", "hey", "thanks", "okay", "yes", "maybe", "sorry", "goodbye", "cheers",
    "pizza", "music", "weather", "coffee", "monday", "holiday", "banana", "homework", "movie",
    "invoice", "password", "dinner", "football", "test", "help", "what", "why", "stop", "go",
)  # fmt: skip
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm", "1234567890")

_TEMPLATES = (
    "{style} of a {colour} {thing}",
    "{style} of a {animal} {animal_verb}",
    "a {animal} {animal_verb} in the {place}",
    "a {colour} {thing} on the table in the {place}",
    "the {thing} in the {place} is broken",
    "please {verb} the {thing} before {day}",
    "can you {verb} my {thing} {day}",
    "where did i leave the {colour} {thing}",
    "what is on {topic} for {day}",
    "tell me about {topic}",
    "remind me to check {topic} {day}",
    "how much does a {thing} cost",
    "we are having {food} for dinner {day}",
    "i would like some {food} and a {thing}",
    "a bowl of {food} next to a {colour} {thing}",
    "{style} of {scenery} at sunset",
    "a {animal} {animal_verb} near {nature} {time}",
    "a {colour} {thing} by {nature}",
    "mist over {nature} {time}",
    "{nature} looks lovely {time}",
    "the {vehicle} to {city} leaves {time}",
    "the {vehicle} from {city} is delayed",
    "my {gadget} {problem}",
    "why does my {gadget} say it {problem}",
    "call {name} {time}",
    "send {name} a message about {topic}",
    "tell {name} that the {thing} is ready",
    "how long does it take to get to {city}",
    "what is the weather in {city} {day}",
    "{name} wants {food} {time}",
    "the {colour} {thing} next to the {thing}",
    "an old {thing} in the corner of the {place}",
    "a {animal} asleep on the {thing}",
    "there is a {animal} in {nature}",
    "i saw a {colour} {animal} {time}",
    "we walked along {nature} {time}",
    "a view of {scenery} from the {place}",
    "draw a {animal}",
    "draw a {colour} {thing}",
    "show me a picture of a {animal}",
    "is the {place} open {day}",
    "the {animal} at the zoo was {animal_verb}",
    "book a table at the {place} for {day}",
    "my {thing} stopped working {day}",
    "how do i {verb} a {thing}",
    "a {animal} and a {animal} {animal_verb} together",
    "turn on the {thing} in the {place}",
    "the {colour} {thing} is mine",
)
_JUNK_KINDS = ("mash", "digits", "word")
JUNK_PROB = 0.2
"""Share of off-domain draws that are junk rather than sentences."""


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


# Slot → its words, in the order `_sentence` draws them (the order fixes every seed's lines).
_FILLS: dict[str, tuple[str, ...]] = {
    "style": STYLES, "colour": COLOURS, "thing": THINGS, "animal": ANIMALS,
    "animal_verb": VERBS_ANIMAL, "place": PLACES, "verb": VERBS_THING, "topic": TOPICS,
    "day": DAYS, "food": FOODS, "scenery": SCENERY, "nature": NATURE, "time": TIMES,
    "city": CITIES, "name": NAMES, "gadget": GADGETS, "problem": PROBLEMS, "vehicle": VEHICLES,
}  # fmt: skip


def _sentence(rng: np.random.Generator) -> str:
    template = _pick(rng, _TEMPLATES)
    fill = {slot: _pick(rng, words) for slot, words in _FILLS.items()}
    # Two {animal} slots get the same word from str.format; that only makes a plural-ish pair.
    sentence = template.format(**fill)
    if rng.random() < 0.15:
        sentence += _pick(rng, ("?", "!", ".", " please", " thanks"))
    return sentence


def vocabulary() -> list[str]:
    """Every word list and template's fixed words: what `train.data.phrasing` keeps colour
    names of the training lexicon clear of, so the off-domain head's "a pumpkin" is not also a
    jacket colour."""
    fixed = [re.sub(r"\{\w+\}", " ", t) for t in _TEMPLATES]
    return [*(w for words in (*_FILLS.values(), WORDS) for w in words), *fixed]


def _junk(rng: np.random.Generator) -> str:
    kind = _pick(rng, _JUNK_KINDS)
    if kind == "mash":
        words = []
        for _ in range(int(rng.integers(1, 4))):
            row = _pick(rng, KEYBOARD_ROWS[:3])
            start = int(rng.integers(len(row) - 2))
            stop = int(rng.integers(start + 3, len(row) + 1))
            words.append(row[start:stop] if rng.random() < 0.7 else row[start:stop][::-1])
        return " ".join(words)
    if kind == "digits":
        groups = [
            "".join(str(int(d)) for d in rng.integers(0, 10, int(rng.integers(1, 6))))
            for _ in range(int(rng.integers(1, 4)))
        ]
        return _pick(rng, (" ", "-", ".", "/")).join(groups)
    return _pick(rng, WORDS)


def off_domain_sentence(rng: np.random.Generator) -> str:
    """One off-domain line: a sentence, or (with probability `JUNK_PROB`) junk."""
    return _junk(rng) if rng.random() < JUNK_PROB else _sentence(rng)


def off_domain_batch(rng: np.random.Generator, count: int) -> list[str]:
    """`count` off-domain lines drawn from `rng`."""
    return [off_domain_sentence(rng) for _ in range(count)]


def eval_sentences() -> list[str]:
    """The committed held-out off-domain list (package data), in file order."""
    text = resources.files("train.text").joinpath(EVAL_FILE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
