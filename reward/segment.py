"""Word segmentation for the alignment term.

Spaced scripts split on whitespace. Chinese uses jieba (its dictionary ships in the
package), or HanLP when a local HanLP model directory is given. Japanese, Thai, Khmer, Lao
and Burmese have no spaces between words: they go through ICU's dictionary-based word
break iterator (bundled with the `icukit-pyicu` wheel, offline), so a sentence is never
counted as one word. Tokens made only of punctuation or symbols are dropped, because they
would count as unalignable words and drag F1 down for every language alike.
"""

from __future__ import annotations

import logging
import unicodedata

from reward.languages import Language

log = logging.getLogger(__name__)

# Scripts written without spaces between words -> ICU locale of the dictionary to use.
ICU_SCRIPTS = {"Jpan": "ja", "Thai": "th", "Khmr": "km", "Laoo": "lo", "Mymr": "my"}
HAN_SCRIPTS = frozenset({"Hans", "Hant", "Hani"})


def _is_word(token: str) -> bool:
    return any(not unicodedata.category(c).startswith(("P", "S", "Z", "C")) for c in token)


class Segmenter:
    """Splits text into words for a given language; not thread-safe (ICU iterators)."""

    def __init__(self, hanlp_model: str | None = None):
        self._icu: dict[str, object] = {}
        self._hanlp = None
        if hanlp_model:
            import hanlp  # optional: only when its model is on disk

            self._hanlp = hanlp.load(hanlp_model)
            log.info("Chinese segmentation: HanLP model %s", hanlp_model)
        else:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            self._jieba = jieba

    def words(self, text: str, lang: Language) -> list[str]:
        script = lang.script
        if script in HAN_SCRIPTS:
            tokens = self._hanlp(text) if self._hanlp else self._jieba.lcut(text)
        elif script in ICU_SCRIPTS:
            tokens = self._icu_words(text, ICU_SCRIPTS[script])
        else:
            tokens = text.split()
        return [t.strip() for t in tokens if _is_word(t)]

    def _icu_words(self, text: str, locale: str) -> list[str]:
        import icu

        breaker = self._icu.get(locale)
        if breaker is None:
            breaker = icu.BreakIterator.createWordInstance(icu.Locale(locale))
            self._icu[locale] = breaker
        breaker.setText(text)
        # ICU returns UTF-16 offsets; icukit's setText/str slicing use the same units
        # only for BMP text, so slice through an icu.UnicodeString to stay correct.
        utext = icu.UnicodeString(text)
        out, start = [], breaker.first()
        for end in breaker:
            out.append(str(utext[start:end]))
            start = end
        return out
