"""Agent traffic for the conversion loop's tests: prompts of a few task types, each with its right answer (so the
generator can play a good LLM) and PII planted in the text (so a test can check none of it survives).

Every prompt is built from seeded choices: the same seed gives the same traffic, and each task type has several
phrasings so that clustering has to find the task, not a fixed string.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

NAMES = ["Maria Lopez", "Tom Baker", "Aiko Tanaka", "Carlos Ruiz", "Priya Shah", "Jonas Weber", "Fatima Khan"]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net"]
STREETS = ["Evergreen Terrace", "Baker Street", "Oak Avenue", "Maple Road", "Elm Street", "Harbor Drive"]
PRODUCTS = ["desk lamp", "laptop stand", "coffee grinder", "backpack", "headphones", "router", "kettle"]
INTENTS = {
    "refund": ["arrived broken and I want my money back", "was charged twice, please refund me"],
    "order_status": ["has not arrived yet, where is it", "shows no tracking update since Monday"],
    "technical_issue": ["will not turn on after the update", "keeps disconnecting from the wifi"],
}
INTENT_PHRASINGS = [
    "Classify this customer message as refund, order_status or technical_issue. Message: {message}",
    "Which intent is this: refund, order_status or technical_issue? Reply with the label only. {message}",
    "Label the support request with one of refund, order_status, technical_issue.\n\n{message}",
]
EXTRACT_PHRASINGS = [
    "Extract the order id and the product from this message as JSON with keys order_id and product: {message}",
    'Return JSON {{"order_id": ..., "product": ...}} for the order mentioned here: {message}',
    "Pull the order number and product name out of the text below into JSON (order_id, product).\n{message}",
]
SENTIMENT_PHRASINGS = [
    "Is the sentiment of this review positive or negative? Review: {review}",
    "Rate this product review as positive or negative, one word: {review}",
    "Sentiment (positive/negative) of the following customer review?\n{review}",
]
SUMMARY_PHRASINGS = [
    "Summarize this tool result in one sentence for the customer: {result}",
    "Turn the following order-lookup output into a short customer-facing sentence.\n{result}",
    "Write one sentence telling the customer what this shipping API response says: {result}",
]
REVIEWS = {
    "positive": ["works perfectly and looks great", "best purchase this year, fast delivery"],
    "negative": ["stopped working after two days", "cheap plastic, broke on arrival"],
}
EXTRACT_SCHEMA = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "product": {"type": "string"}},
    "required": ["order_id", "product"],
}
TASKS = ("intent", "extract", "sentiment", "summary")


def luhn_card(first_15: str) -> str:
    """A card number with its Luhn check digit appended, as every real card has (presidio checks it)."""
    digits = [int(d) for d in first_15 if d.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):  # the check digit will be rightmost: double every other from here
        doubled = digit * 2 if i % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return f"{first_15}{(10 - total % 10) % 10}"


@dataclass
class Prompt:
    """One call an agent makes: its task type, messages, the right answer, and the PII values inside it."""

    task: str
    messages: list[dict[str, Any]]
    answer: str
    pii: list[str] = field(default_factory=list)
    response_format: dict[str, Any] | None = None


class TrafficGenerator:
    """Seeded prompts of the task types in :data:`TASKS`, each with its right answer."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)

    def _person(self) -> tuple[str, list[str]]:
        name = self.rng.choice(NAMES)
        email = f"{name.split()[0].lower()}.{self.rng.randint(10, 99)}@{self.rng.choice(DOMAINS)}"
        phone = f"({self.rng.randint(201, 989)}) 555-{self.rng.randint(1000, 9999)}"
        street = f"{self.rng.randint(2, 990)} {self.rng.choice(STREETS)}"
        card = luhn_card(f"4111 1111 1111 {self.rng.randint(100, 999)}")
        ip = f"10.{self.rng.randint(0, 255)}.{self.rng.randint(0, 255)}.{self.rng.randint(1, 254)}"
        parts = [
            (f"I am {name}.", name),
            (f"Email me at {email}.", email),
            (f"My phone is {phone}.", phone),
            (f"I live at {street}.", street),
            (f"I paid with card {card}.", card),
            (f"My IP is {ip}.", ip),
        ]
        chosen = self.rng.sample(parts, 2)
        return " ".join(text for text, _ in chosen), [value for _, value in chosen]

    def _user(self, text: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": text}]

    def intent(self) -> Prompt:
        label = self.rng.choice(list(INTENTS))
        order = f"A{self.rng.randint(1000, 9999)}"
        who, pii = self._person()
        message = f"{who} My order {order} ({self.rng.choice(PRODUCTS)}) {self.rng.choice(INTENTS[label])}."
        return Prompt("intent", self._user(self.rng.choice(INTENT_PHRASINGS).format(message=message)), label, pii)

    def extract(self) -> Prompt:
        order, product = f"A{self.rng.randint(1000, 9999)}", self.rng.choice(PRODUCTS)
        who, pii = self._person()
        message = f"{who} About order {order}: the {product} {self.rng.choice(INTENTS['refund'])}."
        text = self.rng.choice(EXTRACT_PHRASINGS).format(message=message)
        answer = json.dumps({"order_id": order, "product": product})
        schema = {"type": "json_schema", "json_schema": {"name": "order", "schema": EXTRACT_SCHEMA}}
        return Prompt("extract", self._user(text), answer, pii, schema)

    def sentiment(self) -> Prompt:
        label = self.rng.choice(list(REVIEWS))
        who, pii = self._person()
        review = f"The {self.rng.choice(PRODUCTS)} {self.rng.choice(REVIEWS[label])}. {who}"
        return Prompt("sentiment", self._user(self.rng.choice(SENTIMENT_PHRASINGS).format(review=review)), label, pii)

    def summary(self) -> Prompt:
        order, days = f"A{self.rng.randint(1000, 9999)}", self.rng.randint(1, 9)
        status = self.rng.choice(["shipped", "delayed", "delivered"])
        result = json.dumps({"order_id": order, "status": status, "eta_days": days})
        answer = f"Your order {order} is {status} and should reach you in {days} days."
        text = self.rng.choice(SUMMARY_PHRASINGS).format(result=result)
        return Prompt("summary", self._user(text), answer)

    def prompts(self, per_task: int, tasks: tuple[str, ...] = TASKS) -> list[Prompt]:
        """``per_task`` prompts of each task type, shuffled together."""
        made = [getattr(self, task)() for task in tasks for _ in range(per_task)]
        self.rng.shuffle(made)
        return made


def llm_tier_records(prompts: list[Prompt], start: int = 0) -> list[dict[str, Any]]:
    """The usage log's records of plain calls to the LLM tier answered by the generator (ids ``r<start + i>``)."""
    return [
        {
            "request_id": f"r{start + i}",
            "model": "big",
            "specialist": None,
            "pipeline": None,
            "escalated_from": None,
            "escalation_reason": None,
            "instructions": None,
            "messages": p.messages,
            "tools": None,
            "contract": None,
            "answer": p.answer,
            "tool_calls": [],
            "finish_reason": "stop",
            "error": None,
            "tokens_in": 50,
            "tokens_out": 10,
            "cost": 0.01,
        }
        for i, p in enumerate(prompts)
    ]
