"""Real countries and four facts about each: a domain the target already partly knows, so that a loss is measurable.

The invented world (bench/world.py) can only show what training adds: the target knows none of it to begin with.
Here the target (a small pre-trained model) knows the capitals and currencies of famous countries and not those of
less famous ones, so its score before training is partial and the benchmark can count the facts it knew and lost
after training on distilled data ("do no harm"), as well as the facts it gained. Every fact is a stable, well
established one (capital city, continent, currency, international calling code); countries with a disputed or
split capital, a continent that is a matter of convention, or a currency being replaced are left out.

Deterministic: the table is fixed, --seed only picks the five seeds. Writes, into --out:
  train.jsonl  chat pairs about every fact, in the training phrasings (the teacher's private fine-tuning data)
  test.jsonl   {"prompt", "answer", "aliases"?} asking the same facts in phrasings the teacher never saw (held out)
  seeds.txt    five training-phrasing questions: all the pipeline ever sees of the private data
  recipe.toml  the domain's prompt-writing instruction (expand.instruction), for the transfer benchmark
  entities.txt the country names, no facts: the directory a user may have (the entities strategy)
  facts.jsonl  the ground truth, one (entity, attribute, value, aliases) per line: the fact-level pool measures

    python bench/countries.py --out data/countries [--seed 0]
    python bench/countries.py --out data/countries-drift --drift     a general model writes the prompts (drift)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script or imported
from bench.domainfiles import write_chat_pairs  # noqa: E402

# (country, capital, continent, currency, calling code); "A|B|C" is the value A with its aliases B and C.
# A shared word ("dollar", "peso", "rupee", "krone") is never an alias on its own: evaluation's contains-match would
# take Canada's "Canadian dollar" for Australia's. Nor is an English word ("won", "real", "pound", "MAD", "PEN"):
# bench/facts.py would read "she won" as a currency stated and count a guess.
COUNTRIES = [
    # Europe
    ("France", "Paris", "Europe", "euro|EUR", "+33"),
    ("Germany", "Berlin", "Europe", "euro|EUR", "+49"),
    ("Italy", "Rome", "Europe", "euro|EUR", "+39"),
    ("Spain", "Madrid", "Europe", "euro|EUR", "+34"),
    ("Portugal", "Lisbon", "Europe", "euro|EUR", "+351"),
    ("Greece", "Athens", "Europe", "euro|EUR", "+30"),
    ("Ireland", "Dublin", "Europe", "euro|EUR", "+353"),
    ("Finland", "Helsinki", "Europe", "euro|EUR", "+358"),
    ("Austria", "Vienna", "Europe", "euro|EUR", "+43"),
    ("United Kingdom", "London", "Europe", "pound sterling|British pound|sterling|GBP", "+44"),
    ("Sweden", "Stockholm", "Europe", "Swedish krona|Swedish kronor|SEK", "+46"),
    ("Norway", "Oslo", "Europe", "Norwegian krone|Norwegian kroner|NOK", "+47"),
    ("Denmark", "Copenhagen", "Europe", "Danish krone|Danish kroner|DKK", "+45"),
    ("Iceland", "Reykjavík|Reykjavik", "Europe", "Icelandic króna|Icelandic krona|ISK", "+354"),
    ("Poland", "Warsaw", "Europe", "Polish złoty|Polish zloty|złoty|zloty|PLN", "+48"),
    ("Czech Republic", "Prague", "Europe", "Czech koruna|koruna|CZK", "+420"),
    ("Hungary", "Budapest", "Europe", "Hungarian forint|forint|HUF", "+36"),
    ("Romania", "Bucharest", "Europe", "Romanian leu|leu|RON", "+40"),
    # Asia
    ("Japan", "Tokyo", "Asia", "yen|Japanese yen|JPY", "+81"),
    ("China", "Beijing", "Asia", "renminbi|yuan|Chinese yuan|RMB|CNY", "+86"),
    ("India", "New Delhi", "Asia", "Indian rupee|INR", "+91"),
    ("South Korea", "Seoul", "Asia", "South Korean won|Korean won|KRW", "+82"),
    ("Thailand", "Bangkok", "Asia", "Thai baht|baht|THB", "+66"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese dong|dong|đồng|VND", "+84"),
    ("Philippines", "Manila", "Asia", "Philippine peso|PHP", "+63"),
    ("Pakistan", "Islamabad", "Asia", "Pakistani rupee|PKR", "+92"),
    ("Bangladesh", "Dhaka", "Asia", "Bangladeshi taka|taka|BDT", "+880"),
    ("Nepal", "Kathmandu", "Asia", "Nepalese rupee|Nepali rupee|NPR", "+977"),
    ("Mongolia", "Ulaanbaatar|Ulan Bator", "Asia", "Mongolian tögrög|tögrög|tugrik|Mongolian tugrik|MNT", "+976"),
    ("Laos", "Vientiane", "Asia", "Lao kip|kip|Laotian kip|LAK", "+856"),
    ("Cambodia", "Phnom Penh", "Asia", "Cambodian riel|riel|KHR", "+855"),
    ("Saudi Arabia", "Riyadh", "Asia", "Saudi riyal|SAR", "+966"),
    ("Qatar", "Doha", "Asia", "Qatari riyal|QAR", "+974"),
    ("United Arab Emirates", "Abu Dhabi", "Asia", "UAE dirham|Emirati dirham|AED", "+971"),
    # Africa
    ("Nigeria", "Abuja", "Africa", "Nigerian naira|naira|NGN", "+234"),
    ("Kenya", "Nairobi", "Africa", "Kenyan shilling|KES", "+254"),
    ("Ethiopia", "Addis Ababa", "Africa", "Ethiopian birr|birr|ETB", "+251"),
    ("Morocco", "Rabat", "Africa", "Moroccan dirham", "+212"),
    ("Ghana", "Accra", "Africa", "Ghanaian cedi|cedi|GHS", "+233"),
    ("Uganda", "Kampala", "Africa", "Ugandan shilling|UGX", "+256"),
    ("Algeria", "Algiers", "Africa", "Algerian dinar|DZD", "+213"),
    ("Tunisia", "Tunis", "Africa", "Tunisian dinar|TND", "+216"),
    ("Zambia", "Lusaka", "Africa", "Zambian kwacha|ZMW", "+260"),
    ("Rwanda", "Kigali", "Africa", "Rwandan franc|RWF", "+250"),
    ("Botswana", "Gaborone", "Africa", "Botswana pula|pula|BWP", "+267"),
    ("Namibia", "Windhoek", "Africa", "Namibian dollar|NAD", "+264"),
    ("Madagascar", "Antananarivo", "Africa", "Malagasy ariary|ariary|MGA", "+261"),
    ("Mozambique", "Maputo", "Africa", "Mozambican metical|metical|MZN", "+258"),
    # the Americas
    (
        "United States",
        "Washington, D.C.|Washington DC|Washington",
        "North America",
        "US dollar|U.S. dollar|United States dollar|American dollar|USD",
        "+1",
    ),
    ("Canada", "Ottawa", "North America", "Canadian dollar|CAD", "+1"),
    ("Mexico", "Mexico City", "North America", "Mexican peso|MXN", "+52"),
    ("Brazil", "Brasília|Brasilia", "South America", "Brazilian real|BRL", "+55"),
    ("Chile", "Santiago", "South America", "Chilean peso|CLP", "+56"),
    ("Peru", "Lima", "South America", "Peruvian sol|sol|nuevo sol", "+51"),
    ("Colombia", "Bogotá|Bogota", "South America", "Colombian peso|COP", "+57"),
    # dollarised since 2000: a fact a model that guesses from the region gets wrong
    ("Ecuador", "Quito", "South America", "US dollar|U.S. dollar|United States dollar|American dollar|USD", "+593"),
    ("Uruguay", "Montevideo", "South America", "Uruguayan peso|UYU", "+598"),
    ("Paraguay", "Asunción|Asuncion", "South America", "Paraguayan guaraní|guaraní|guarani|PYG", "+595"),
    # Oceania: "Australia" is no alias of it, or any answer that repeats the question's own country would count
    ("Australia", "Canberra", "Oceania", "Australian dollar|AUD", "+61"),
    ("New Zealand", "Wellington", "Oceania", "New Zealand dollar|NZD", "+64"),
    ("Fiji", "Suva", "Oceania", "Fijian dollar|FJD", "+679"),
]
# names a sentence reads with "the" before them; the entity itself is the bare name
WITH_THE = {"United Kingdom", "Czech Republic", "Philippines", "United Arab Emirates", "United States"}
ATTRIBUTES = ("capital", "continent", "currency", "calling_code")

# (question template, answer template) per attribute; {country} is the name as a sentence reads it.
TRAIN = {
    "capital": [
        ("What is the capital of {country}?", "The capital of {country} is {capital}."),
        ("Which city is the capital of {country}?", "{capital} is the capital city of {country}."),
    ],
    "continent": [
        ("On which continent is {country}?", "{country} is in {continent}."),
        ("Which continent is {country} part of?", "{country} is part of {continent}."),
    ],
    "currency": [
        ("What is the currency of {country}?", "The currency of {country} is the {currency}."),
        ("What money is used in {country}?", "{country} uses the {currency}."),
    ],
    "calling_code": [
        (
            "What is the international calling code for {country}?",
            "The international calling code for {country} is {calling_code}.",
        ),
        (
            "Which dialling code do you use to phone {country} from abroad?",
            "To phone {country} from abroad, dial {calling_code}.",
        ),
    ],
}
TEST = {
    "capital": "Tell me the capital city of {country}.",
    "continent": "To which continent does {country} belong?",
    "currency": "Which currency would you pay with in {country}?",
    "calling_code": "What telephone country code does {country} have?",
}

INSTRUCTION = """Here are questions about countries:

{examples}

Write one new question about a country: its capital city, the continent it is on, its currency, or its \
international calling code. Reply with the question only."""


def _split(field: str) -> tuple[str, list[str]]:
    value, *aliases = field.split("|")
    return value, aliases


def _code_aliases(code: str) -> list[str]:
    # the digits alone: how a model often writes a code, and what normalisation leaves of "+81" anyway
    return [code.removeprefix("+")]


def make_countries() -> list[dict]:
    """One record per country: its name, the name as a sentence reads it, and each attribute's value and aliases."""
    countries = []
    for name, capital, continent, currency, code in COUNTRIES:
        fields = {"capital": _split(capital), "continent": _split(continent), "currency": _split(currency)}
        fields["calling_code"] = (code, _code_aliases(code))
        countries.append(
            {
                "name": name,
                "country": f"the {name}" if name in WITH_THE else name,
                "values": {a: v for a, (v, _) in fields.items()},
                "aliases": {a: al for a, (_, al) in fields.items()},
            }
        )
    return sorted(countries, key=lambda c: c["name"])


def _sentence(template: str, country: dict) -> str:
    text = template.format(country=country["country"], **country["values"])
    # "the United States is in North America." starts a sentence; "Washington, D.C.." ends one twice
    text = text[:-1] if text.endswith("..") else text
    return text[0].upper() + text[1:]


def _row(*pairs: tuple[str, object]) -> str:
    # "aliases" only where there are some: the readers take it as optional
    return json.dumps({k: v for k, v in pairs if v != []}, ensure_ascii=False) + "\n"


def write(out: Path, seed: int) -> None:
    countries = make_countries()
    out.mkdir(parents=True, exist_ok=True)
    pairs = [
        (_sentence(question, c), _sentence(answer, c))
        for c in countries
        for phrasings in TRAIN.values()
        for question, answer in phrasings
    ]
    write_chat_pairs(out / "train.jsonl", pairs, ascii_only=False)
    with (out / "test.jsonl").open("w", encoding="utf-8") as f:
        for c in countries:
            for a, question in TEST.items():
                f.write(
                    _row(("prompt", _sentence(question, c)), ("answer", c["values"][a]), ("aliases", c["aliases"][a]))
                )
    rng = random.Random(seed + 1)
    seeds = [
        _sentence(TRAIN[a][0][0], c)
        for a, c in zip(
            ["capital", "currency", "calling_code", "continent", "capital"], rng.sample(countries, 5), strict=True
        )
    ]
    (out / "seeds.txt").write_text("\n".join(seeds) + "\n", encoding="utf-8")
    # A JSON string is a valid TOML basic string.
    (out / "recipe.toml").write_text(f"[expand]\ninstruction = {json.dumps(INSTRUCTION)}\n", encoding="utf-8")
    # names only, no facts: the directory a user may have (the entities strategy's input)
    (out / "entities.txt").write_text("".join(c["name"] + "\n" for c in countries), encoding="utf-8")
    with (out / "facts.jsonl").open("w", encoding="utf-8") as f:
        for c in countries:
            for a in ATTRIBUTES:
                f.write(
                    _row(
                        ("entity", c["name"]), ("attribute", a), ("value", c["values"][a]), ("aliases", c["aliases"][a])
                    )
                )


# The drift variant: a general instruct model (the un-tuned SmolLM2, the benchmark's base) writes the prompts from
# the country seeds mixed with general questions, so that a share of the candidates ask what the tuned teacher knows
# no better than its base; a keep rule should drop those and keep the in-domain ones (bench/facts.py: in-domain).
DRIFT_GENERATOR = "../models/SmolLM2-135M-Instruct.Q4_1.gguf"  # relative to recipes/, as the shared recipe's paths
DRIFT_INSTRUCTION = """Here are questions people asked an assistant:

{examples}

Write one new question someone might ask. Reply with the question only."""
GENERAL = Path(__file__).resolve().parent / "prompts.jsonl"  # general-knowledge questions, not about countries


def write_drift(out: Path, general: int = 10) -> None:
    """Turn a written domain into its drift variant: general seeds beside the country ones, a general writer."""
    questions = [json.loads(line)["prompt"] for line in GENERAL.read_text(encoding="utf-8").splitlines()][:general]
    seeds = (out / "seeds.txt").read_text(encoding="utf-8").splitlines()
    (out / "seeds.txt").write_text("\n".join(seeds + questions) + "\n", encoding="utf-8")
    (out / "recipe.toml").write_text(
        f"[generator]\nmodel = {json.dumps(DRIFT_GENERATOR)}\nn_ctx = 512\n\n"
        f"[expand]\ninstruction = {json.dumps(DRIFT_INSTRUCTION)}\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drift", action="store_true", help="general seeds and a general writer (write_drift)")
    args = parser.parse_args()
    write(args.out, args.seed)
    if args.drift:
        write_drift(args.out)
    print(f"{args.out}: {len(COUNTRIES)} countries, {len(COUNTRIES) * len(ATTRIBUTES)} facts")
