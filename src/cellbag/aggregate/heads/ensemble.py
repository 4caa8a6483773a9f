"""An ensemble of unlike heads: a linear, a kernel and an attention model of the bags."""

from __future__ import annotations

import numpy as np

from cellbag.aggregate.base import AggregateError, Head, PlattScaling, logit
from cellbag.aggregate.registry import make_head, register_head


@register_head("ensemble")
class EnsembleHead(Head):
    """The mean of its member heads' log-odds, each divided by the spread of its own
    out-of-fold log-odds on the training bags (so no member dominates by scale), turned
    back into a log-odds by Platt scaling on the out-of-fold mean. Every member is trained
    image-only with its own defaults; nothing is weighted by a search (80 training bags
    cannot choose weights reliably; an equal vote of unlike models is steadier than any of
    them on the public MIL benchmarks, see the README). Clinical features enter by late
    fusion on top, as for every head. Per-cell contributions are by occlusion: how much the
    bag's log-odds drops when the cell is left out."""

    contribution_kind = "occlusion"

    def __init__(
        self,
        clinical: bool = True,
        seed: int = 0,
        members: tuple[str, ...] = ("meanpool", "svm", "abmil"),
    ) -> None:
        super().__init__(clinical=clinical, seed=seed)
        self.members = members

    def _member(self, name: str) -> Head:
        if name in ("ensemble", "clinical"):
            raise AggregateError(f"head 'ensemble': {name!r} cannot be a member")
        return make_head(name, clinical=False, seed=self.seed)

    def settings(self) -> dict:
        # a member's defaults are part of what this head learns
        members = {name: self._member(name).settings() for name in self.members}
        return {**self.get_params(deep=False), "member_settings": members}

    def _fit(self, bags, y) -> np.ndarray:
        if not self.members:
            raise AggregateError("head 'ensemble': no members given")
        self.members_, scales, votes = [], [], []
        for name in self.members:
            m = self._member(name).fit(bags, y)
            oof = getattr(m, "train_oof_proba_", None)
            oof = logit(oof) if oof is not None else m._inner_oof(bags, y)
            self.members_.append(m)
            scales.append(float(np.std(oof)) or 1.0)
            votes.append(oof / scales[-1])
        self.scales_ = np.asarray(scales)
        vote = np.mean(votes, axis=0)
        self.platt_ = PlattScaling().fit(vote, y)
        return self.platt_.decision(vote)

    def _decision(self, bags) -> np.ndarray:
        votes = [
            m.decision_function(bags) / s for m, s in zip(self.members_, self.scales_, strict=True)
        ]
        return self.platt_.decision(np.mean(votes, axis=0))

    def _cell_contributions(self, bags):
        return self._occlusion(bags)

    def _loo_decisions(self, bag):
        votes = [
            m._loo_decisions(bag) / s for m, s in zip(self.members_, self.scales_, strict=True)
        ]
        return self.platt_.decision(np.mean(votes, axis=0))

    def _get_state(self):
        arrays, texts, members = {}, {}, []
        for j, m in enumerate(self.members_):
            meta, a, t = m._get_state()
            arrays.update({f"m{j}.{k}": v for k, v in a.items()})
            texts.update({f"m{j}.{k}": v for k, v in t.items()})
            members.append(
                {"meta": meta, "texts": sorted(t), "classes": m.classes_.tolist(), "dim": m.dim_}
            )
        arrays["scales"] = self.scales_
        arrays.update(self.platt_.state())
        return {"members": members}, arrays, texts

    def _set_state(self, meta, arrays, texts):
        self.members_ = []
        for j, (name, doc) in enumerate(zip(self.members, meta["members"], strict=True)):
            m = self._member(name)
            pre = f"m{j}."
            a = {k[len(pre) :]: v for k, v in arrays.items() if k.startswith(pre)}
            t = {f: texts[pre + f] for f in doc["texts"]}
            m.classes_, m.dim_, m.n_clinical_ = np.asarray(doc["classes"]), int(doc["dim"]), 0
            m._set_state(doc["meta"], a, t)
            self.members_.append(m)
        self.scales_ = arrays["scales"]
        self.platt_ = PlattScaling().set_state(arrays)
