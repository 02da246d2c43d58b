"""rescue-scenes attribute vocabulary: names, values, class ids, held-out colour×terrain pairs.

Standard library only, so the caption grammar, the evaluator and the demo can import it cheaply.
The order of names and values is a contract (docs/ARCHITECTURE.md, docs/DATA_FORMAT.md): attribute
index `i` of an image stored in a dataset means `ATTRIBUTE_VALUES[name][i]`, and

    class_id = ((((colour·6 + terrain)·3 + pose)·3 + position)·2 + helmet)

i.e. the row-major index of the full combination (8·6·3·3·2 = 864 classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

ATTRIBUTE_NAMES: tuple[str, ...] = ("colour", "terrain", "pose", "position", "helmet")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "white", "black"),
    "terrain": ("rubble", "grass", "sand", "snow", "water", "mud"),
    "pose": ("standing", "sitting", "lying"),
    "position": ("left", "center", "right"),
    # "no" first so the index reads as a boolean: helmet index 1 = wearing one.
    "helmet": ("no", "yes"),
}
NUM_CLASSES = 864

# Held out of train and test, rendered only in test_unseen (7 of 48 pairs, 14.6 %). Chosen so
# every colour but one and every terrain stays in train with at least four partners, and none of
# the pairs is a low-contrast one (green/grass, white/snow, blue/water) that would confound
# "unseen" with "hard to see".
UNSEEN_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "snow"),
    ("orange", "water"),
    ("yellow", "mud"),
    ("green", "sand"),
    ("blue", "rubble"),
    ("purple", "grass"),
    ("black", "snow"),
)

_SIZES = tuple(len(ATTRIBUTE_VALUES[n]) for n in ATTRIBUTE_NAMES)


@dataclass(frozen=True)
class Attributes:
    """One rescue-scenes attribute combination, by value name."""

    colour: str
    terrain: str
    pose: str
    position: str
    helmet: str

    def __post_init__(self) -> None:
        for name in ATTRIBUTE_NAMES:
            value = getattr(self, name)
            if value not in ATTRIBUTE_VALUES[name]:
                raise ValueError(
                    f"attribute {name!r}: unknown value {value!r} "
                    f"(one of {', '.join(ATTRIBUTE_VALUES[name])})"
                )

    @property
    def indices(self) -> tuple[int, ...]:
        """Value indices in `ATTRIBUTE_NAMES` order."""
        return tuple(ATTRIBUTE_VALUES[n].index(getattr(self, n)) for n in ATTRIBUTE_NAMES)

    @property
    def class_id(self) -> int:
        """Row-major index of the full combination, 0..863."""
        class_id = 0
        for index, size in zip(self.indices, _SIZES, strict=True):
            class_id = class_id * size + index
        return class_id

    @property
    def has_helmet(self) -> bool:
        """True when the person wears a helmet."""
        return self.helmet == "yes"

    @property
    def name(self) -> str:
        """Stable class name, e.g. 'orange/rubble/lying/left/helmet=no'."""
        return f"{self.colour}/{self.terrain}/{self.pose}/{self.position}/helmet={self.helmet}"

    @classmethod
    def from_indices(cls, indices: tuple[int, ...] | list[int]) -> Attributes:
        """Build from value indices in `ATTRIBUTE_NAMES` order."""
        if len(indices) != len(ATTRIBUTE_NAMES):
            raise ValueError(
                f"expected {len(ATTRIBUTE_NAMES)} attribute indices, got {len(indices)}"
            )
        values = []
        for name, index in zip(ATTRIBUTE_NAMES, indices, strict=True):
            if not 0 <= int(index) < len(ATTRIBUTE_VALUES[name]):
                raise ValueError(f"attribute {name!r}: index {index} out of range")
            values.append(ATTRIBUTE_VALUES[name][int(index)])
        return cls(*values)

    @classmethod
    def from_class_id(cls, class_id: int) -> Attributes:
        """Inverse of `class_id`."""
        if not 0 <= int(class_id) < NUM_CLASSES:
            raise ValueError(f"class id {class_id} out of range 0..{NUM_CLASSES - 1}")
        indices = []
        rest = int(class_id)
        for size in reversed(_SIZES):
            indices.append(rest % size)
            rest //= size
        return cls.from_indices(indices[::-1])


def all_attributes() -> list[Attributes]:
    """Every combination, in class-id order."""
    return [
        Attributes(*values) for values in product(*(ATTRIBUTE_VALUES[n] for n in ATTRIBUTE_NAMES))
    ]


def class_names() -> list[str]:
    """Class names in class-id order."""
    return [a.name for a in all_attributes()]


def is_unseen(attributes: Attributes) -> bool:
    """True when the colour×terrain pair is held out for test_unseen."""
    return (attributes.colour, attributes.terrain) in UNSEEN_PAIRS


assert len(all_attributes()) == NUM_CLASSES
