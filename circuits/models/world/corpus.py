"""The seeded corpus of the `world` organism, with its held-out evaluation sets.

Every line is a prompt and an answer; training puts loss on the answer tokens only.
- addition: `calc: 36+59=95` for a, b in 10..99. Unordered pairs {a, b} are held out (both orders,
  so commutativity cannot leak the answer), about 12% of all ordered pairs, never from a sum that
  would be left with fewer than 3 training pairs, and never a case-study pair (36+59).
- one-hop facts, every fact in three templates (state->capital, city->state, team->city,
  player->team); all of them are trained.
- two-hop queries (city->state->capital, team->city->state->capital,
  player->team->city->state->capital). Some are held out; their one-hop facts stay in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from circuits.models.world.facts import CITY_STATE, PLAYER_TEAM, STATE_CAPITAL, TEAM_CITY, player_state

ADD_RANGE = range(10, 100)
CASE_STUDY_PAIRS = [(36, 59)]
CASE_STUDY_CITIES = ["Dallas"]
CASE_STUDY_PLAYERS = ["Kobe Bryant"]
ADD_HELDOUT_FRACTION = 0.12
TWO_HOP_HELDOUT_FRACTION = 0.2
MIN_TRAIN_PAIRS_PER_SUM = 3

ONE_HOP_TEMPLATES: dict[str, list[str]] = {
    "state_capital": ["Fact: the capital of {state} is",
                      "Fact: {state} has its capital in",
                      "Q: What is the capital of {state}? A:"],
    "city_state": ["Fact: {city} is a city in the state of",
                   "Fact: the state containing {city} is",
                   "Q: Which state is {city} in? A:"],
    "team_city": ["Fact: the {team} play basketball in",
                  "Fact: the {team} are a basketball team from",
                  "Q: Which city do the {team} play in? A:"],
    "player_team": ["Fact: {player} played basketball for the",
                    "Fact: {player} was a star of the",
                    "Q: Which team did {player} play for? A:"],
}

TWO_HOP_TEMPLATES: dict[str, str] = {
    "city_capital": "Fact: the capital of the state containing {city} is",
    "team_capital": "Fact: the capital of the state where the {team} play is",
    "player_capital": "Fact: the capital of the state where {player} played basketball is",
}


@dataclass(frozen=True)
class Example:
    """One corpus line: the model reads `prompt` and is trained to continue with `answer`."""

    prompt: str
    answer: str
    kind: str  # addition | one_hop/<relation> | two_hop/<template>

    @property
    def text(self) -> str:
        sep = "" if self.prompt.endswith("=") else " "
        return f"{self.prompt}{sep}{self.answer}"


def addition_example(a: int, b: int) -> Example:
    return Example(f"calc: {a}+{b}=", str(a + b), "addition")


def _heldout_addition_pairs(rng: random.Random) -> set[tuple[int, int]]:
    unordered = [(a, b) for a in ADD_RANGE for b in ADD_RANGE if a <= b]
    rng.shuffle(unordered)
    n_ordered_total = len(ADD_RANGE) ** 2
    train_per_sum: dict[int, int] = {}
    for a, b in unordered:
        train_per_sum[a + b] = train_per_sum.get(a + b, 0) + 1
    protected = {tuple(sorted(p)) for p in CASE_STUDY_PAIRS}
    heldout: set[tuple[int, int]] = set()
    for a, b in unordered:
        if len(heldout) >= ADD_HELDOUT_FRACTION * n_ordered_total:
            break
        if (a, b) in protected or train_per_sum[a + b] <= MIN_TRAIN_PAIRS_PER_SUM:
            continue
        train_per_sum[a + b] -= 1
        heldout |= {(a, b), (b, a)}
    return heldout


def one_hop_examples() -> list[Example]:
    tables = {"state_capital": ("state", STATE_CAPITAL), "city_state": ("city", CITY_STATE),
              "team_city": ("team", TEAM_CITY), "player_team": ("player", PLAYER_TEAM)}
    out = []
    for relation, (slot, table) in tables.items():
        for subject, obj in table.items():
            for template in ONE_HOP_TEMPLATES[relation]:
                out.append(Example(template.format(**{slot: subject}), obj, f"one_hop/{relation}"))
    return out


def two_hop_examples() -> list[Example]:
    out = []
    for city, state in CITY_STATE.items():
        out.append(Example(TWO_HOP_TEMPLATES["city_capital"].format(city=city), STATE_CAPITAL[state],
                           "two_hop/city_capital"))
    for team, city in TEAM_CITY.items():
        out.append(Example(TWO_HOP_TEMPLATES["team_capital"].format(team=team),
                           STATE_CAPITAL[CITY_STATE[city]], "two_hop/team_capital"))
    for player in PLAYER_TEAM:
        out.append(Example(TWO_HOP_TEMPLATES["player_capital"].format(player=player),
                           STATE_CAPITAL[player_state(player)], "two_hop/player_capital"))
    return out


def _split_two_hop(examples: list[Example], rng: random.Random) -> tuple[list[Example], list[Example]]:
    protected = {TWO_HOP_TEMPLATES["city_capital"].format(city=c) for c in CASE_STUDY_CITIES}
    protected |= {TWO_HOP_TEMPLATES["player_capital"].format(player=p) for p in CASE_STUDY_PLAYERS}
    train, heldout = [], []
    for kind in TWO_HOP_TEMPLATES:
        group = [e for e in examples if e.kind == f"two_hop/{kind}"]
        candidates = [e for e in group if e.prompt not in protected]
        rng.shuffle(candidates)
        held = set(e.prompt for e in candidates[:round(TWO_HOP_HELDOUT_FRACTION * len(group))])
        train += [e for e in group if e.prompt not in held]
        heldout += [e for e in group if e.prompt in held]
    return train, heldout


@dataclass
class WorldCorpus:
    """The whole corpus for one seed: training lines and the held-out evaluation sets."""

    seed: int
    addition_train: list[Example]
    addition_heldout: list[Example]
    heldout_pairs: list[tuple[int, int]]
    one_hop: list[Example]
    two_hop_train: list[Example]
    two_hop_heldout: list[Example]
    facts: dict = field(default_factory=dict)

    def train_examples(self) -> list[Example]:
        return self.addition_train + self.one_hop + self.two_hop_train

    def all_examples(self) -> list[Example]:
        return self.train_examples() + self.addition_heldout + self.two_hop_heldout

    def meta(self) -> dict:
        """Json-able description for meta.json: seed, held-out sets, sizes and the fact tables."""
        return {
            "seed": self.seed,
            "addition_range": [ADD_RANGE.start, ADD_RANGE.stop - 1],
            "heldout_addition_pairs": [list(p) for p in self.heldout_pairs],
            "heldout_two_hop": [{"prompt": e.prompt, "answer": e.answer, "kind": e.kind}
                                for e in self.two_hop_heldout],
            "case_study_prompts": ["calc: 36+59=",
                                   TWO_HOP_TEMPLATES["city_capital"].format(city="Dallas"),
                                   TWO_HOP_TEMPLATES["player_capital"].format(player="Kobe Bryant")],
            "sizes": {"addition_train": len(self.addition_train),
                      "addition_heldout": len(self.addition_heldout),
                      "one_hop": len(self.one_hop), "two_hop_train": len(self.two_hop_train),
                      "two_hop_heldout": len(self.two_hop_heldout)},
            "templates": {"one_hop": ONE_HOP_TEMPLATES, "two_hop": TWO_HOP_TEMPLATES},
            "facts": self.facts,
        }


def make_corpus(seed: int = 0) -> WorldCorpus:
    """The corpus for `seed` (the same seed always gives the same corpus)."""
    rng = random.Random(seed)
    heldout = _heldout_addition_pairs(rng)
    pairs = [(a, b) for a in ADD_RANGE for b in ADD_RANGE]
    two_hop_train, two_hop_heldout = _split_two_hop(two_hop_examples(), rng)
    return WorldCorpus(
        seed=seed,
        addition_train=[addition_example(a, b) for a, b in pairs if (a, b) not in heldout],
        addition_heldout=[addition_example(a, b) for a, b in pairs if (a, b) in heldout],
        heldout_pairs=sorted(heldout),
        one_hop=one_hop_examples(),
        two_hop_train=two_hop_train,
        two_hop_heldout=two_hop_heldout,
        facts={"state_capital": STATE_CAPITAL, "city_state": CITY_STATE, "team_city": TEAM_CITY,
               "player_team": PLAYER_TEAM},
    )
