from __future__ import annotations

from pathlib import Path

import pytest

from cesagram.data.pseudonymise import (
    SYNTHETIC_DATA_KEY,
    Pseudonymiser,
    PseudonymKeyError,
    load_key,
)

KEY = b"k" * 16


def test_same_identity_same_token_and_handles_link_to_authors() -> None:
    pseudonymiser = Pseudonymiser(KEY)
    author = pseudonymiser.author("Lina_09")
    assert author.startswith("user_") and len(author) == len("user_") + 12
    assert pseudonymiser.author("@lina_09") == author
    assert pseudonymiser.text("ask @Lina_09.") == f"ask @{author}."


def test_another_key_gives_other_tokens() -> None:
    assert Pseudonymiser(KEY).author("lina") != Pseudonymiser(b"j" * 16).author("lina")


@pytest.mark.parametrize(
    ("text", "kind", "raw"),
    [
        ("mail me at Lina.K@example.com ok", "email", "Lina.K@example.com"),
        ("call +32 470 12 34 56 now", "phone", "470 12 34 56"),
        ("number 0612345678!", "phone", "0612345678"),
        ("join discord.gg/abcd tonight", "url", "discord.gg/abcd"),
        ("see https://example.org/x?y=1.", "url", "example.org"),
        ("see www.example.com", "url", "www.example.com"),
    ],
)
def test_identifiers_in_text_become_tokens(text: str, kind: str, raw: str) -> None:
    replaced = Pseudonymiser(KEY).text(text)
    assert raw not in replaced
    assert f"[{kind}_" in replaced


@pytest.mark.parametrize(
    "text", ["I'm 14, born 2011-03-04", "at 03:20 ok", "level 42 boss", "1 2 3 go"]
)
def test_ordinary_numbers_stay(text: str) -> None:
    assert Pseudonymiser(KEY).text(text) == text


def test_trailing_punctuation_survives() -> None:
    replaced = Pseudonymiser(KEY).text("go to www.example.com, then (discord.gg/x).")
    assert replaced.endswith(").") and ", then (" in replaced


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CESAGRAM_PSEUDONYM_KEY", "a-secret-of-enough-length")
    assert load_key() == b"a-secret-of-enough-length"


def test_key_file_wins_over_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("file-secret-0123456789\n")
    assert load_key(key_file) == b"file-secret-0123456789"


def test_missing_key_is_an_error_for_real_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CESAGRAM_PSEUDONYM_KEY")
    with pytest.raises(PseudonymKeyError, match="set CESAGRAM_PSEUDONYM_KEY"):
        load_key()
    assert load_key(synthetic=True) == SYNTHETIC_DATA_KEY


def test_short_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CESAGRAM_PSEUDONYM_KEY", "short")
    with pytest.raises(PseudonymKeyError, match="has 5 characters; use at least 16"):
        load_key()


def test_unreadable_key_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(PseudonymKeyError, match=r"nokey: cannot read the key file"):
        load_key(tmp_path / "nokey")
