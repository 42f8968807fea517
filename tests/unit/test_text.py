"""storage.text: the NFC copy and the accent-folded search key of the index."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.text import fold, nfc
from tests.fixtures.synthetic import VIETNAMESE_PATIENTS

# Letters that decompose (Vietnamese stacks two marks on one vowel), the ones Unicode does
# not decompose (đ, ø, ł, ...), and precomposed letters whose decomposition starts with one of
# those (ǿ = ø + acute, ǣ = æ + macron).
_INTERESTING = "aăâeêioôơuưyAĂÂEÊIOÔƠUƯYđĐðÐøØłŁßæÆœŒıǿǾǣǢǽǼẫẪệỆữỮỹỸ^= \u0300\u0301\u0303\u0309\u0323\u0306\u0302\u031b"
texts = st.text(alphabet=st.sampled_from(_INTERESTING) | st.characters(codec="utf-8"), max_size=40)
PROPERTY = settings(max_examples=400, deadline=None, database=None)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Nguyễn^Văn Đức", "nguyen^van duc"),
        ("Trần^Thị Hương", "tran^thi huong"),
        ("Phạm^Thị Ánh Tuyết", "pham^thi anh tuyet"),
        ("Đặng^Quốc Bảo", "dang^quoc bao"),
        ("Huỳnh^Ngọc Diễm", "huynh^ngoc diem"),
        ("Võ^Minh Tâm^^BS.", "vo^minh tam^^bs."),
        ("Buc^Jérôme", "buc^jerome"),
        ("Äneas^Rüdiger", "aneas^rudiger"),
        ("Łukasz^Søren", "lukasz^soren"),
        ("Weiß^Æsa", "weiss^aesa"),
        ("Yamada^Tarou=山田^太郎", "yamada^tarou=山田^太郎"),
        ("", ""),
    ],
)
def test_fold_examples(name: str, key: str) -> None:
    assert fold(name) == key


@pytest.mark.parametrize("d", ["đ", "Đ"])
def test_d_with_stroke_folds_to_d(d: str) -> None:
    # U+0111/U+0110 have no canonical decomposition: a plain NFD strip would keep them.
    assert unicodedata.decomposition(d) == ""
    assert fold(d) == "d"
    assert fold(f"{d}ường") == "duong"


@pytest.mark.parametrize("patient", VIETNAMESE_PATIENTS, ids=lambda p: p.patient_id)
def test_decomposed_input_gives_the_same_key(patient: object) -> None:
    name = patient.name  # type: ignore[attr-defined]
    decomposed = unicodedata.normalize("NFD", name)
    assert decomposed != name  # every name has at least one mark
    assert fold(decomposed) == fold(name)
    assert fold(name).isascii()
    assert nfc(decomposed) == name


def test_separators_and_case() -> None:
    assert fold("NGUYỄN^VĂN=ĐỨC") == "nguyen^van=duc"
    assert fold("A^B^^C=D") == "a^b^^c=d"


def test_latin_letters_one_by_one() -> None:
    """Every letter of the Latin, Greek and Cyrillic blocks: stable key, NFD/NFC-invariant."""
    ranges = [(0x00, 0x250), (0x370, 0x530), (0x1E00, 0x2000)]
    for lo, hi in ranges:
        for cp in range(lo, hi):
            ch = chr(cp)
            key = fold(ch)
            assert fold(key) == key, f"U+{cp:04X}"
            assert fold(unicodedata.normalize("NFD", ch)) == key, f"U+{cp:04X}"
            assert not any(unicodedata.combining(c) for c in key), f"U+{cp:04X}"


@PROPERTY
@given(texts)
def test_fold_is_idempotent(value: str) -> None:
    assert fold(fold(value)) == fold(value)


@PROPERTY
@given(texts)
def test_fold_ignores_normalisation_form(value: str) -> None:
    key = fold(value)
    for form in ("NFC", "NFD"):
        assert fold(unicodedata.normalize(form, value)) == key


@PROPERTY
@given(texts)
def test_fold_keeps_component_structure(value: str) -> None:
    key = fold(value)
    assert key.count("^") == value.count("^")
    assert key.count("=") == value.count("=")
    assert not any(unicodedata.combining(c) for c in key)


@PROPERTY
@given(texts)
def test_nfc_is_idempotent_and_canonical(value: str) -> None:
    once = nfc(value)
    assert nfc(once) == once
    assert nfc(unicodedata.normalize("NFD", value)) == once
    assert unicodedata.is_normalized("NFC", once)
