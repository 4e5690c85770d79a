"""Gender de-biasing of generated captions, as LAION did ("woman"/"man" -> "person", "her"/"his"
-> "their", "and so on"; the full list was never published, so ours is written out here).

Rules: whole words only (a hyphen or letter on either side blocks a match, so "womanhood",
"manhole", "human", "man-made" are untouched), case preserved (woman -> person, Woman ->
Person, WOMAN -> PERSON), plurals and possessives ("women's" -> "people's"), and cheap verb
agreement after a replaced subject pronoun ("she is" -> "they are", "he speaks" -> "they speak").
"her" is "their" before a word that can follow a possessive and "them" otherwise; "his" is
"their" before a word and "theirs" at the end of a clause. Bump :data:`DEBIAS_VERSION` whenever
the list or the rules change: the record keeps the version with the raw text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

DEBIAS_VERSION = "1"

#: Gendered noun -> neutral noun. Plurals are listed, possessives ('s, s') follow automatically.
NOUNS = {
    "woman": "person", "women": "people", "man": "person", "men": "people",
    "lady": "person", "ladies": "people", "gentleman": "person", "gentlemen": "people",
    "girl": "child", "girls": "children", "boy": "child", "boys": "children",
    "guy": "person", "guys": "people", "gal": "person", "gals": "people",
    "female": "person", "females": "people", "male": "person", "males": "people",
    "mother": "parent", "mothers": "parents", "father": "parent", "fathers": "parents",
    "mom": "parent", "moms": "parents", "mum": "parent", "mums": "parents",
    "dad": "parent", "dads": "parents", "mommy": "parent", "daddy": "parent",
    "son": "child", "sons": "children", "daughter": "child", "daughters": "children",
    "brother": "sibling", "brothers": "siblings", "sister": "sibling", "sisters": "siblings",
    "husband": "spouse", "husbands": "spouses", "wife": "spouse", "wives": "spouses",
    "boyfriend": "partner", "boyfriends": "partners", "girlfriend": "partner",
    "girlfriends": "partners", "grandmother": "grandparent", "grandmothers": "grandparents",
    "grandfather": "grandparent", "grandfathers": "grandparents", "grandma": "grandparent",
    "grandpa": "grandparent", "uncle": "relative", "aunt": "relative", "uncles": "relatives",
    "aunts": "relatives", "niece": "relative", "nephew": "relative",
    "businessman": "businessperson", "businesswoman": "businessperson",
    "businessmen": "businesspeople", "businesswomen": "businesspeople",
    "policeman": "police officer", "policewoman": "police officer",
    "policemen": "police officers", "policewomen": "police officers",
    "fireman": "firefighter", "firemen": "firefighters",
    "chairman": "chairperson", "chairwoman": "chairperson",
    "spokesman": "spokesperson", "spokeswoman": "spokesperson",
}

#: Adjectival uses: "male speech", "female voice" read better as "human" than as "person".
ADJECTIVE_BEFORE = {"female": "human", "male": "human"}

#: Subject pronouns take plural verb agreement.
SUBJECT_PRONOUNS = {"he": "they", "she": "they"}
OTHER_PRONOUNS = {"him": "them", "himself": "themselves", "herself": "themselves",
                  "hers": "theirs"}
#: Contractions of subject pronouns.
CONTRACTIONS = {"he's": "they're", "she's": "they're", "he'll": "they'll", "she'll": "they'll",
                "he'd": "they'd", "she'd": "they'd"}

#: Irregular agreement after "they".
_AGREE = {"is": "are", "was": "were", "has": "have", "does": "do", "isn't": "aren't",
          "wasn't": "weren't", "hasn't": "haven't", "doesn't": "don't", "goes": "go"}
#: Words after a pronoun that are not 3rd-person verbs (no "-s" to strip).
_NOT_VERBS = {"always", "also", "just", "sometimes", "never", "then", "still", "was", "is",
              "has", "does", "this", "thus", "perhaps", "as", "its", "plus", "yes", "less"}
#: After "her", these mean "her" is an object ("thanks her for", "hear her speak").
_OBJECT_FOLLOWERS = {"and", "or", "but", "as", "to", "for", "from", "with", "in", "on", "at",
                     "by", "of", "off", "up", "down", "out", "over", "again", "while", "when",
                     "speak", "speaks", "talk", "sing", "laugh", "say", "that", "then",
                     "too", "so", "because", "before", "after", "if", "a", "an", "the", "is",
                     "was", "are", "were"}

_TOKEN = re.compile(r"(?<![\w-])([A-Za-z]+)('s|s'|'|’s)?(?![\w-])")


@dataclass
class Debiased:
    text: str
    replacements: list[tuple[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.replacements)


def _match_case(src: str, repl: str) -> str:
    if src.isupper() and len(src) > 1:
        return repl.upper()
    if src[0].isupper():
        return repl[0].upper() + repl[1:]
    return repl


def _agree(verb: str) -> str:
    low = verb.lower()
    if low in _AGREE:
        return _match_case(verb, _AGREE[low])
    if low in _NOT_VERBS or not low.isalpha() or len(low) < 3 or not low.endswith("s"):
        return verb
    if low.endswith(("ss", "us", "is", "ous")):
        return verb
    if low.endswith("ies") and len(low) > 4:
        base = low[:-3] + "y"
    elif low.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        base = low[:-2]
    else:
        base = low[:-1]
    return _match_case(verb, base)


def debias(text: str) -> Debiased:
    """Replace gendered words with neutral ones; returns the new text and what changed."""
    tokens = list(_TOKEN.finditer(text))
    out: list[str] = []
    changes: list[tuple[str, str]] = []
    pos = 0
    fix_next_verb = False
    for i, m in enumerate(tokens):
        word, suffix = m.group(1), m.group(2) or ""
        low = word.lower()
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        gap = text[m.end():nxt.start()] if nxt else ""
        next_word = nxt.group(0).lower() if nxt and gap.strip() == "" else None
        repl = None
        if fix_next_verb and not suffix:
            agreed = _agree(word)
            if agreed != word:
                repl = agreed
        fix_next_verb = False
        full = (word + suffix).lower().replace("’", "'")
        if repl is not None:
            pass
        elif full in CONTRACTIONS:
            repl, suffix = CONTRACTIONS[full], ""
        elif low in SUBJECT_PRONOUNS and not suffix:
            repl = SUBJECT_PRONOUNS[low]
            fix_next_verb = True
        elif low in OTHER_PRONOUNS and not suffix:
            repl = OTHER_PRONOUNS[low]
        elif low == "her" and not suffix:
            repl = "their" if next_word and next_word not in _OBJECT_FOLLOWERS else "them"
        elif low == "his" and not suffix:
            repl = "their" if next_word else "theirs"
        elif low in NOUNS or (low.endswith("s") and suffix == "'" and low in NOUNS):
            if low in ADJECTIVE_BEFORE and next_word and next_word not in _OBJECT_FOLLOWERS:
                repl = ADJECTIVE_BEFORE[low]
            else:
                repl = NOUNS[low]
            if suffix in ("s'",):          # "womens'" style: treat as plural possessive
                suffix = "'"
        if repl is None:
            continue
        new = _match_case(word, repl)
        if suffix == "'" and not new.lower().endswith("s"):
            suffix = "'s"                   # "men's"-style already handled; "boys'" -> "children's"
        out.append(text[pos:m.start()])
        out.append(new + suffix)
        changes.append((m.group(0), new + suffix))
        pos = m.end()
    out.append(text[pos:])
    return Debiased("".join(out), changes)
