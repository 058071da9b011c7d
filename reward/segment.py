"""Word segmentation for the alignment term, in one of two modes.

`walar` (WALAR's `zh_tokenize`): Chinese goes through HanLP (a local model directory or a
HanLP identifier; WALAR uses coarse_electra_small_20220616) and the tokens in WALAR's
punctuation list are dropped; every other language is split on whitespace and nothing is
dropped. Without a HanLP model, Chinese falls back to jieba (same list dropped, plus the
whitespace tokens jieba returns and HanLP never does), and the service warns about it.

`icu` (ours): whitespace for spaced scripts; Chinese through HanLP when given, else jieba;
Japanese, Thai, Khmer, Lao and Burmese, written without spaces between words, through
ICU's dictionary-based word break iterator (bundled with the `icukit-pyicu` wheel,
offline), so a sentence is never counted as one word. Tokens made only of punctuation or
symbols are dropped in every language, because they would count as unalignable words and
drag F1 down for every language alike.
"""

from __future__ import annotations

import logging
import unicodedata

from reward.languages import Language

log = logging.getLogger(__name__)

MODES = ("walar", "icu")
# Scripts written without spaces between words -> ICU locale of the dictionary to use.
ICU_SCRIPTS = {"Jpan": "ja", "Thai": "th", "Khmr": "km", "Laoo": "lo", "Mymr": "my"}
# WALAR segments only its "Chinese" (Simplified); Traditional Chinese is no more spaced.
HAN_SCRIPTS = frozenset({"Hans", "Hant", "Hani"})
# The tokens WALAR drops from HanLP's output (serve_rm.py, zh_tokenize).
WALAR_ZH_PUNCTUATION = frozenset({
    ",", '"', ".", "\u2014", "(", ")", "/", "\\", "'",
    "\uff1a", "\u201c", "\u201d", "\uff0c", "\u3002",  # full-width colon, quotes, comma, stop
})


def _is_word(token: str) -> bool:
    return any(not unicodedata.category(c).startswith(("P", "S", "Z", "C")) for c in token)


def hanlp_devices(device: str):
    """HanLP's `devices` argument for a torch-style device string."""
    if device == "auto":
        import torch

        return 0 if torch.cuda.is_available() else []
    if device.startswith("cuda"):
        return int(device.partition(":")[2] or 0)
    return []  # CPU


class Segmenter:
    """Splits text into words for a given language; not thread-safe (ICU iterators)."""

    def __init__(self, mode: str = "walar", hanlp_model: str | None = None,
                 device: str = "cpu"):
        if mode not in MODES:
            raise ValueError(f"unknown segmentation {mode!r}: use one of {MODES}")
        self.mode = mode
        self.hanlp_model = hanlp_model
        self._icu: dict[str, object] = {}
        self._hanlp = self._jieba = None
        if hanlp_model:
            import hanlp

            self._hanlp = hanlp.load(hanlp_model, devices=hanlp_devices(device), verbose=False)
            log.info("Chinese segmentation: HanLP %s", hanlp_model)
        else:
            import jieba

            jieba.setLogLevel(logging.WARNING)
            jieba.initialize()
            self._jieba = jieba

    @property
    def chinese(self) -> str:
        return f"hanlp {self.hanlp_model}" if self._hanlp else "jieba"

    def falls_back(self, lang: Language) -> bool:
        """Whether `lang` is Chinese segmented by jieba where WALAR's rule uses HanLP."""
        return self.mode == "walar" and self._hanlp is None and lang.script in HAN_SCRIPTS

    def words(self, text: str, lang: Language) -> list[str]:
        script = lang.script
        if script in HAN_SCRIPTS:
            tokens = self._hanlp(text) if self._hanlp else self._jieba.lcut(text)
            if self.mode == "walar":
                return [t for t in tokens if t not in WALAR_ZH_PUNCTUATION and t.strip()]
        elif self.mode == "walar":
            return text.split()
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
