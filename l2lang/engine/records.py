"""What the executor keeps of each forward pass, and per-request views of it.

One `StepRecord` per step: who the rows were, the first-pass norm after every observed layer (one
tensor per step), and where each action took effect. Applications read these: `trace` and
`calibrate` the norms, `select` the decode norms of each candidate, the report the effects. Records
stay on the device until a consumer reads them; nothing here runs inside a forward pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from l2lang.engine.backend import StepRows
from l2lang.plan import Plan


@dataclass
class StepRecord:
    rows: StepRows
    slot_uids: tuple[int | None, ...]  # the request holding each slot during this step
    steps: torch.Tensor | int          # each row's decode step (0 for prompt rows), int64 [N] or one for all
    layers: tuple[int, ...]            # the observed layers, in the order of `norms`
    norms: torch.Tensor                # float32 [len(layers), N]
    effects: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (rule, action) -> bool [N]
    extra_layer_passes: int = 0        # layer forward passes run by recursions in this step
    row_passes: torch.Tensor | None = None  # int32 [N]: of those, the ones run for each row (None: none)

    def norm(self, layer: int) -> torch.Tensor:
        return self.norms[self.layers.index(layer)]


@dataclass
class RequestRows:
    """One request's rows across steps, in order: prompt positions, then each generated token."""

    uid: int
    phases: list[str]                 # "prefill" | "decode" per row
    steps: list[int]
    norms: torch.Tensor               # float32 [rows, observed layers]
    layers: tuple[int, ...]

    def to_plain(self) -> dict:
        """As plain data (lists and numbers), to cross a process boundary."""
        return {"uid": self.uid, "phases": self.phases, "steps": self.steps, "norms": self.norms.tolist(),
                "layers": list(self.layers)}

    @classmethod
    def from_plain(cls, data: dict) -> RequestRows:
        norms = torch.tensor(data["norms"], dtype=torch.float32).reshape(len(data["phases"]), len(data["layers"]))
        return cls(data["uid"], data["phases"], data["steps"], norms, tuple(data["layers"]))


def request_rows(records: list[StepRecord], uids: list[int]) -> dict[int, RequestRows]:
    """Each request's valid rows, gathered from the records (host-side; for traces, calibration and
    selection). Work per record and per request, none per row."""
    if not records:
        return {uid: RequestRows(uid, [], [], torch.zeros(0, 0), ()) for uid in uids}
    layers = tuple(sorted(records[0].layers))
    owners, decodes, steps, norms = [], [], [], []
    for record in records:  # on the records' device; one copy to the host at the end
        rows = record.rows
        owned = [-1 if uid is None else uid for uid in record.slot_uids] + [-1]  # invalid rows may point past
        slot_owner = torch.tensor(owned, device=rows.slots.device)                # the table: clamp them to -1
        owners.append(torch.where(rows.valid, slot_owner[rows.slots.clamp(0, len(owned) - 1)], -1))
        decodes.append(rows.decode)
        steps.append(torch.as_tensor(record.steps, device=rows.slots.device).expand(rows.size))
        norms.append(record.norms[[record.layers.index(layer) for layer in layers]].T)  # in layer order
    owner, decode, step, norm = (torch.cat(parts).cpu() for parts in (owners, decodes, steps, norms))
    out = {}
    for uid in uids:
        mine = owner == uid
        out[uid] = RequestRows(uid, ["decode" if d else "prefill" for d in decode[mine].tolist()],
                               step[mine].tolist(), norm[mine], layers)
    return out


@dataclass
class Report:
    """Interventions per (action, layer) label, each request's interventions, and the costs."""

    fingerprint: str
    interventions: dict[str, int]
    requests: list[dict] = field(default_factory=list)
    extra_layer_passes: int = 0
    nonfinite_states: int = 0

    def total(self) -> int:
        return sum(self.interventions.values())


def action_labels(plan: Plan) -> dict[tuple[int, int], str]:
    """`kind@layer` for each (rule, action) of the plan; `kind@layer [rule R.A]` where two share it."""
    plain = {(rule.id, i): f"{action.kind}@{action.layer}" for rule in plan.rules
             for i, action in enumerate(rule.actions)}
    shared = Counter(plain.values())
    return {key: label if shared[label] == 1 else f"{label} [rule {key[0]}.{key[1]}]" for key, label in plain.items()}


def build_report(plan: Plan, records: list[StepRecord], uids: list[int], nonfinite: int = 0) -> Report:
    """Counts per rule action and layer (every action of the plan listed, 0 when it never took effect;
    labels from `action_labels`) and, for each request in `uids` (in that order), its interventions
    as {step, phase, rule, action, layer} (one entry per step, rule and action: a prefill rule acting at
    several prompt positions is one entry) and its `counts` per label (every row where an action took
    effect, as in the totals: a request's counts over all requests add up to them) and its
    `extra_layer_passes`: the layer passes recursions ran for its rows."""
    actions = {(rule.id, i): action for rule in plan.rules for i, action in enumerate(rule.actions)}
    labels = action_labels(plan)
    counts: Counter[str] = Counter({label: 0 for label in labels.values()})
    traces: dict[int, list[dict]] = {uid: [] for uid in uids}
    seen: dict[int, set[tuple]] = {uid: set() for uid in uids}
    own: dict[int, Counter[str]] = {uid: Counter() for uid in uids}
    for record in records:
        if not record.effects:
            continue
        slots, decode, steps = record.rows.slots.cpu(), record.rows.decode.cpu(), _per_row(record.steps, record.rows.size)
        for (rule_id, index), effect in record.effects.items():
            action = actions[(rule_id, index)]
            hits = effect.cpu()
            for row in hits.nonzero().flatten().tolist():
                uid = record.slot_uids[int(slots[row])]
                if uid not in traces:
                    continue
                counts[labels[(rule_id, index)]] += 1
                own[uid][labels[(rule_id, index)]] += 1
                phase = "decode" if decode[row] else "prefill"
                if (steps[row], phase, rule_id, index) not in seen[uid]:  # one entry per (step, rule, action)
                    seen[uid].add((steps[row], phase, rule_id, index))      # of a request, however its rows
                    traces[uid].append({"step": steps[row], "phase": phase, "rule": rule_id,  # come in steps
                                        "action": action.kind, "layer": action.layer})
    own_passes = dict.fromkeys(uids, 0)
    for record in records:
        if record.row_passes is not None:
            slots, passes = record.rows.slots.cpu(), record.row_passes.cpu()
            for row in passes.nonzero().flatten().tolist():
                uid = record.slot_uids[int(slots[row])]
                if uid in own_passes:
                    own_passes[uid] += int(passes[row])
    passes = sum(r.extra_layer_passes for r in records)
    return Report(plan.fingerprint, dict(sorted(counts.items())),
                  [{"interventions": traces[u], "counts": dict(sorted(own[u].items())), "extra_layer_passes": own_passes[u]}
                   for u in uids], passes, nonfinite)


def _per_row(steps: torch.Tensor | int, rows: int) -> list[int]:
    """A record's decode steps, one per row."""
    return steps.tolist() if torch.is_tensor(steps) else [steps] * rows
