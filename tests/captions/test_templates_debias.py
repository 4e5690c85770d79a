"""Template captions in the paper's form and the de-bias rules."""
from __future__ import annotations

import pytest

from laion_audio.captions import templates
from laion_audio.captions.debias import DEBIAS_VERSION, debias


def test_template_matches_paper_form():
    assert templates.render("sounds_of", ["Speech", "Dog", "Bark"]) == "The sounds of Speech, Dog and Bark"
    assert templates.render("sounds_of", ["Speech", "Music"]) == "The sounds of Speech and Music"
    assert templates.render("sounds_of", ["Speech"]) == "The sound of Speech"
    assert templates.render("sound_of_period", ["siren"]) == "The sound of siren."
    assert templates.render("sound_of_the", ["insects"]) == "The sound of the insects"
    # AudioSet names keep their own commas, verbatim
    assert (templates.render("sounds_of", ["Male speech, man speaking", "Music"])
            == "The sounds of Male speech, man speaking and Music")


def test_template_errors_are_clear():
    with pytest.raises(ValueError, match="unknown template"):
        templates.render("nope", ["a"])
    with pytest.raises(ValueError, match="at least one label"):
        templates.render("sounds_of", [])


@pytest.mark.parametrize("raw, expected", [
    ("A woman speaks and a man laughs", "A person speaks and a person laughs"),
    ("Woman speaking", "Person speaking"),                        # capital kept
    ("MAN SHOUTING", "PERSON SHOUTING"),                          # upper case kept
    ("Women and men cheer", "People and people cheer"),           # plurals
    ("A woman's voice and the men's choir", "A person's voice and the people's choir"),
    ("The boys' bikes", "The children's bikes"),                  # plural possessive
    ("She is talking to her dog", "They are talking to their dog"),  # agreement + possessive
    ("He speaks while a car passes", "They speak while a car passes"),
    ("Somebody thanks her for it", "Somebody thanks them for it"),   # object "her"
    ("He's laughing", "They're laughing"),
    ("The song is his.", "The song is theirs."),
    ("Male speech, man speaking", "Human speech, person speaking"),
    ("A girl and her mother", "A child and their parent"),
])
def test_debias_cases(raw, expected):
    assert debias(raw).text == expected


@pytest.mark.parametrize("text", [
    "womanhood and manhood", "a manhole cover", "human voices", "man-made noise",
    "Manchester traffic", "the German anthem", "shepherd and herd", "this is history",
    "a Woman-led group",
])
def test_debias_leaves_other_words_alone(text):
    result = debias(text)
    assert result.text == text and result.count == 0


def test_debias_reports_replacements_and_version():
    result = debias("A man and a woman")
    assert result.replacements == [("man", "person"), ("woman", "person")]
    assert result.count == 2
    assert DEBIAS_VERSION
