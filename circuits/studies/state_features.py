"""Finding "state" features for two-hop facts, and swapping them (METHOD.md section 6).

A state feature of state S is one that, at the last token ("... is"), fires on the two-hop prompts
whose intermediate state is S and not on those of other states. Reference prompts are every
two-hop query the world corpus can form (city, team and player templates). For each (layer,
feature): score_S = mean activation over S's prompts - the largest mean over any other state's
prompts; a feature qualifies when it fires on at least half of S's prompts and score_S > 0.

A swap on a prompt of state S towards state T: inhibit S's features that are active on the prompt
(a multiple of their activation), and inject T's features with the activations they have on a
source prompt of state T (circuits.interventions.injections_from), all at the last position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuits.studies.experiments import Experiment, no_candidates, run_experiment
from circuits.interventions import Intervention, feature_activations, injections_from
from circuits.replacement.prompts import tokenize_prompt
from circuits.replacement.model import ReplacementModel

MIN_FIRING = 0.5  # a state feature fires on at least this share of its state's prompts
# Swap settings, chosen on the pairs of `circuits validate --seed 0` (its swap grid; the success
# rate in docs/case_studies.md uses the pairs of --seed 1). The world model spreads a state over
# several features: `circuits demo two-hop` also prints the swap at k = 5, 10, 20, 30, 50, 80.
DEFAULT_K = 20         # state features per swap side
DEFAULT_INHIBIT = -1.0  # multiplier for the state features removed (-1: invert, 0: ablate)
DEFAULT_INJECT = 4.0    # scale of the activations injected from the source prompt


def two_hop_queries() -> list[tuple[str, str, str]]:
    """(prompt, state, capital) for every two-hop query of the world corpus."""
    from circuits.models.world.corpus import TWO_HOP_TEMPLATES as T
    from circuits.models.world.facts import CITY_STATE, PLAYER_TEAM, STATE_CAPITAL, TEAM_CITY

    out = [(T["city_capital"].format(city=c), s, STATE_CAPITAL[s]) for c, s in CITY_STATE.items()]
    out += [(T["team_capital"].format(team=t), CITY_STATE[c], STATE_CAPITAL[CITY_STATE[c]])
            for t, c in TEAM_CITY.items()]
    out += [(T["player_capital"].format(player=p), CITY_STATE[TEAM_CITY[t]], STATE_CAPITAL[CITY_STATE[TEAM_CITY[t]]])
            for p, t in PLAYER_TEAM.items()]
    return out


@dataclass
class StateFeature:
    layer: int
    feature: int
    score: float        # mean on the state's prompts - the largest other state's mean
    mean_in: float
    firing: float       # share of the state's prompts it fires on


class StateFeatureFinder:
    """Last-position activations of the reference prompts, computed once; queried per state."""

    def __init__(self, rm: ReplacementModel, queries: list[tuple[str, str, str]] | None = None):
        self.rm = rm
        self.queries = queries if queries is not None else two_hop_queries()
        acts = [self.last_acts(prompt) for prompt, _, _ in self.queries]
        self.acts_n_layer_feat = np.stack(acts)                     # [n_prompts, L, F]
        self.states = np.array([s for _, s, _ in self.queries])

    @classmethod
    def from_activations(cls, rm: ReplacementModel | None, queries: list[tuple[str, str, str]],
                         acts_n_layer_feat: np.ndarray) -> "StateFeatureFinder":
        """A finder over given last-position activations [n_prompts, L, F] (no model run)."""
        finder = cls.__new__(cls)
        finder.rm, finder.queries = rm, list(queries)
        finder.acts_n_layer_feat = np.asarray(acts_n_layer_feat, dtype=np.float32)
        finder.states = np.array([s for _, s, _ in finder.queries])
        return finder

    def last_acts(self, prompt: str) -> np.ndarray:
        tokens = tokenize_prompt(self.rm.model, prompt)
        return feature_activations(self.rm.model, self.rm.transcoder, tokens)[-1].float().cpu().numpy()

    def find(self, state: str, k: int = DEFAULT_K, exclude: tuple[str, ...] = (),
             allowed: np.ndarray | None = None) -> list[StateFeature]:
        """The k best state features of `state`; `exclude` drops reference prompts (leave-out);
        `allowed` [L, F] (bool) keeps only those features (e.g. the ones active on a prompt)."""
        keep = np.array([p not in exclude for p, _, _ in self.queries])
        acts, states = self.acts_n_layer_feat[keep], self.states[keep]
        in_state = states == state
        if not in_state.any():
            return []
        mean_in = acts[in_state].mean(0)
        firing = (acts[in_state] > 0).mean(0)
        others = [acts[states == s].mean(0) for s in np.unique(states[~in_state])]
        score = mean_in - (np.max(others, axis=0) if others else 0.0)
        ok = (firing >= MIN_FIRING) & (score > 0)
        if allowed is not None:
            ok &= np.asarray(allowed, dtype=bool)
        flat = np.flatnonzero(ok.reshape(-1))
        flat = flat[np.argsort(-score.reshape(-1)[flat], kind="stable")][:k]
        F = acts.shape[2]
        return [StateFeature(int(i // F), int(i % F), float(score.reshape(-1)[i]), float(mean_in.reshape(-1)[i]),
                             float(firing.reshape(-1)[i])) for i in flat]


@dataclass
class SwapPlan:
    removed: list[StateFeature]
    added: list[StateFeature]
    interventions: list[Intervention]


def plan_swap(finder: StateFeatureFinder, prompt: str, state: str, source_prompt: str, source_state: str,
              k: int = DEFAULT_K, inhibit: float = DEFAULT_INHIBIT, inject_scale: float = DEFAULT_INJECT,
              leave_out: bool = False) -> SwapPlan:
    """Inhibit `state`'s features on `prompt`; inject `source_state`'s, read from `source_prompt`."""
    rm = finder.rm
    exclude = (prompt, source_prompt) if leave_out else ()
    acts_here, acts_source = finder.last_acts(prompt), finder.last_acts(source_prompt)
    # inhibit what fires here more than on the source; inject what fires on the source more than here
    removed = finder.find(state, k, exclude, allowed=(acts_here != 0) & (acts_here > acts_source))
    added = finder.find(source_state, k, exclude, allowed=(acts_source != 0) & (acts_source > acts_here))
    ivs = [Intervention(f.layer, -1, f.feature, multiplier=inhibit) for f in removed]
    src = tokenize_prompt(rm.model, source_prompt)
    ivs += injections_from(rm.model, rm.transcoder, src, [(f.layer, -1, f.feature) for f in added],
                           at_pos=-1, scale=inject_scale)
    return SwapPlan(removed, added, ivs)


def run_swap(finder: StateFeatureFinder, prompt: str, state: str, capital: str, source_prompt: str,
             source_state: str, source_capital: str, name: str | None = None, **kw) -> tuple[Experiment, SwapPlan]:
    plan = plan_swap(finder, prompt, state, source_prompt, source_state, **kw)
    name = name or f"swap {state} -> {source_state}"
    if not plan.removed or not plan.added:
        missing = state if not plan.removed else source_state
        exp = no_candidates(name, "swap", capital, f"no {missing} feature found at the last position")
        exp.goal = source_capital
        return exp, plan
    tokens = tokenize_prompt(finder.rm.model, prompt)
    return run_experiment(finder.rm, tokens, name, plan.interventions, capital, goal=source_capital,
                          kind="swap"), plan


def run_inhibit(finder: StateFeatureFinder, prompt: str, state: str, capital: str, k: int = DEFAULT_K,
                inhibit: float = DEFAULT_INHIBIT, name: str | None = None) -> Experiment:
    name = name or f"inhibit {state}"
    removed = finder.find(state, k, allowed=finder.last_acts(prompt) != 0)
    if not removed:
        return no_candidates(name, "inhibit", capital, f"no {state} feature found at the last position")
    ivs = [Intervention(f.layer, -1, f.feature, multiplier=inhibit) for f in removed]
    return run_experiment(finder.rm, tokenize_prompt(finder.rm.model, prompt), name, ivs, capital)


def one_hop_probe(finder: StateFeatureFinder, state: str, features: list[StateFeature]) -> dict[str, int]:
    """How many of `features` are selective for `state` (mean on its prompts > every other state's
    mean) at the last token of one-hop prompts where the answer is the state itself ("Fact: the
    state containing {city} is" -> Texas) or its capital ("Fact: the capital of {state} is" ->
    Austin). A feature of the intermediate state should fire in the first set."""
    from circuits.models.world.corpus import ONE_HOP_TEMPLATES
    from circuits.models.world.facts import CITY_STATE, STATE_CAPITAL

    if not hasattr(finder, "_probes"):
        sets = {"state_is_answer": [(ONE_HOP_TEMPLATES["city_state"][1].format(city=c), st) for c, st in CITY_STATE.items()],
                "capital_is_answer": [(ONE_HOP_TEMPLATES["state_capital"][0].format(state=st), st) for st in STATE_CAPITAL]}
        finder._probes = {name: (np.stack([finder.last_acts(p) for p, _ in rows]), np.array([st for _, st in rows]))
                          for name, rows in sets.items()}
    out = {"n_features": len(features), "chance": len(features) / max(len(np.unique(finder.states)), 1)}
    for name, (acts, states) in finder._probes.items():
        mean_in = acts[states == state].mean(0)
        others = np.max([acts[states == st].mean(0) for st in np.unique(states) if st != state], axis=0)
        out[name] = sum(bool(mean_in[f.layer, f.feature] > others[f.layer, f.feature]) for f in features)
    return out
