"""Text normalisation for the index: Unicode NFC and the accent-folded search key.

The stored object keeps every value byte-for-byte; only the index holds these normalised copies.
Vietnamese needs one rule Unicode does not give: đ/Đ (U+0111/U+0110) have no decomposition, so
they are mapped to d/D explicitly before the combining marks are stripped.
"""

from __future__ import annotations

import unicodedata

_EXPLICIT_FOLDS = str.maketrans(
    {
        "đ": "d",
        "Đ": "D",
        "ð": "d",
        "Ð": "D",
        "ø": "o",
        "Ø": "O",
        "ł": "l",
        "Ł": "L",
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
        "ı": "i",
    }
)


def nfc(value: str) -> str:
    """Return ``value`` in Unicode Normalisation Form C."""
    return unicodedata.normalize("NFC", value)


def fold(value: str) -> str:
    """Accent- and case-folded search key: "Nguyễn^Văn Đức" -> "nguyen^van duc".

    Combining marks are removed after canonical decomposition, đ/Đ map to d, the result is
    lower-cased. DICOM component separators (``^``, ``=``) are kept so that matching can still
    address components.
    """
    # Decompose first: "ǿ" (U+01FF) is "ø" + acute, and the explicit folds must see that "ø".
    decomposed = unicodedata.normalize("NFD", value).translate(_EXPLICIT_FOLDS)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", stripped).casefold()


def transliterate(value: str) -> str:
    """Plain ASCII without diacritics, case kept: "Nguyễn^Văn Đức" -> "Nguyen^Van Duc", for
    old consoles that show only the default character repertoire. Characters with no ASCII
    form (CJK, Cyrillic) become "?"."""
    decomposed = unicodedata.normalize("NFD", value).translate(_EXPLICIT_FOLDS)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.encode("ascii", "replace").decode("ascii")
