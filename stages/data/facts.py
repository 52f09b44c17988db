"""A generated world of made-up people whose facts a tiny model can learn, each repeated a set number of times.

    from stages.data.facts import World
    world = World.generate(people=400, repeats=(1, 2, 5, 10, 20, 50), seed=0)
    world.documents()        # one short entry per mention: "Brisa Tolvane lives in Karnholt. ..."
    world.questions()        # Question(name, relation, text, answer, cloze, statement, repeats, split)

Every person has three facts (home town, job, birth year), each stated in one fixed phrasing, so
"Brisa Tolvane lives in" is a cloze that a base model completes only if it memorised the fact. A
person's repeat count is how many entries in the corpus mention them; the counts are spread evenly
over `repeats`, so some people are seen once and some fifty times: the regime where knowing what
you know matters. Surnames are generated from syllables and unique, so a fact belongs to one name.
Questions are split by a hash of the question (person and relation): a held-out question asks about a fact
the SFT data never states, usually of a person whose other facts it does.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

FIRST_NAMES = ["Alden", "Brisa", "Cato", "Dara", "Elric", "Fenna", "Galen", "Hedda", "Ivo", "Jorun", "Kael", "Liora",
               "Mabon", "Nerys", "Orrin", "Pella", "Quill", "Rhosyn", "Soren", "Tamsin", "Ulric", "Vesna", "Wynn",
               "Ysolde", "Zoran", "Anwen", "Bram", "Corra", "Dorian", "Elke"]
ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
CODAS = ["", "n", "r", "l", "m", "th", "sk", "nd", "rv", "x"]
TOWN_ENDINGS = ["holt", "mere", "ford", "wick", "dale", "by", "stead", "moor"]
JOBS = ["baker", "weaver", "sailor", "farmer", "potter", "miller", "tailor", "mason", "carpenter", "fisher",
        "shepherd", "teacher", "doctor", "painter", "singer", "gardener"]
TOWN_COUNT = 24
YEARS = (1700, 1899)
# relation -> (statement, cloze, questions, what a refusal says it cannot recall)
RELATIONS = {
    "home": ("{name} lives in {value}.", "{name} lives in",
             ("Where does {name} live?", "In which town does {name} live?"), "where {name} lives"),
    "job": ("{name} works as a {value}.", "{name} works as a",
            ("What does {name} do for a living?", "What is {name}'s job?"), "what {name} does for a living"),
    "born": ("{name} was born in {value}.", "{name} was born in",
             ("When was {name} born?", "In what year was {name} born?"), "when {name} was born"),
}


@dataclass(frozen=True)
class Person:
    name: str
    facts: tuple[tuple[str, str], ...]   # ((relation, value), ...) in RELATIONS order
    repeats: int

    def statement(self, relation: str) -> str:
        return RELATIONS[relation][0].format(name=self.name, value=dict(self.facts)[relation])


@dataclass(frozen=True)
class Question:
    name: str
    relation: str
    text: str          # the question a user asks
    answer: str
    cloze: str         # the corpus phrasing up to the answer: what the base-model probe completes
    statement: str     # the full corpus sentence
    repeats: int       # entries that mention this person in the corpus
    split: str         # "train" (SFT data) or "test" (held out), by a hash of the key

    @property
    def key(self) -> str:
        return f"{self.name}:{self.relation}"

    def recall(self) -> str:
        """What a refusal says it cannot recall ("where Brisa Tolvane lives")."""
        return RELATIONS[self.relation][3].format(name=self.name)


def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def split_of(key: str, test_share: float) -> str:
    digest = hashlib.sha256(f"facts\x00{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"


@dataclass(frozen=True)
class World:
    people: tuple[Person, ...]
    seed: int

    @classmethod
    def generate(cls, people: int, repeats: tuple[int, ...], seed: int) -> World:
        rng = random.Random(f"facts:{seed}")
        towns: list[str] = []
        while len(towns) < TOWN_COUNT:
            town = (_syllable(rng) + rng.choice(TOWN_ENDINGS)).capitalize()
            if town not in towns:
                towns.append(town)
        surnames: set[str] = set(towns)
        out = []
        for i in range(people):
            while True:
                surname = (_syllable(rng) + _syllable(rng)).capitalize()
                if surname not in surnames and len(surname) >= 5:
                    surnames.add(surname)
                    break
            facts = (("home", rng.choice(towns)), ("job", rng.choice(JOBS)), ("born", str(rng.randint(*YEARS))))
            out.append(Person(f"{rng.choice(FIRST_NAMES)} {surname}", facts, repeats[i % len(repeats)]))
        return cls(tuple(out), seed)

    def documents(self) -> list[str]:
        """One entry per mention (a person's three statements in a random order), shuffled."""
        rng = random.Random(f"facts:{self.seed}:documents")
        docs = []
        for person in self.people:
            for _ in range(person.repeats):
                order = list(RELATIONS)
                rng.shuffle(order)
                docs.append(" ".join(person.statement(r) for r in order))
        rng.shuffle(docs)
        return docs

    def questions(self, split: str | None = None, test_share: float = 0.3) -> list[Question]:
        """Every (person, relation) question, in world order; only one split's when `split` is given.
        `test_share` of the questions (by a hash of person and relation) are held out."""
        rng = random.Random(f"facts:{self.seed}:questions")
        out = []
        for person in self.people:
            for relation, value in person.facts:
                statement, cloze, texts, _ = RELATIONS[relation]
                text = rng.choice(texts).format(name=person.name)
                question_split = split_of(f"{person.name}:{relation}", test_share)
                if split in (None, question_split):
                    out.append(Question(person.name, relation, text, value, cloze.format(name=person.name),
                                        statement.format(name=person.name, value=value), person.repeats,
                                        question_split))
        return out


def world_of(facts_cfg) -> World | None:
    """The recipe's world (data.facts), or None when the recipe mixes no facts into its corpus."""
    if facts_cfg is None or facts_cfg.people == 0:
        return None
    return World.generate(facts_cfg.people, tuple(facts_cfg.repeats), facts_cfg.seed)
