"""The 25 HyperCT findings: one catalogue shared by the model, the viewer and every export.

The task index of a finding is its position in ``assets/findings.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml

GROUP_LABELS = {"conventional": "Conventional", "opportunistic": "Opportunistic"}


@dataclass(frozen=True)
class Code:
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Finding:
    index: int
    id: str
    name: str
    short_name: str
    group: str
    definition: str
    criterion: str | None = None
    ct_rate_column: str | None = None
    paper_auc: dict = field(default_factory=dict, hash=False, compare=False)
    codes: tuple[Code, ...] = ()

    @property
    def group_label(self) -> str:
        return GROUP_LABELS[self.group]

    @property
    def tooltip(self) -> str:
        text = f"{self.name} ({self.group_label})\n{self.definition}"
        if self.criterion:
            text += f"\nCriterion: {self.criterion}"
        return text


@dataclass(frozen=True)
class Catalogue:
    version: str
    findings: tuple[Finding, ...]
    groups: dict = field(hash=False, compare=False)
    local_coding_scheme: dict = field(hash=False, compare=False)

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self):
        return iter(self.findings)

    def __getitem__(self, key: int | str) -> Finding:
        if isinstance(key, int):
            return self.findings[key]
        for f in self.findings:
            if f.id == key:
                return f
        raise KeyError(f"unknown finding id {key!r}; known ids: {', '.join(self.ids)}")

    @property
    def ids(self) -> list[str]:
        return [f.id for f in self.findings]

    def index(self, finding_id: str) -> int:
        return self[finding_id].index

    def indices(self, ids: list[str] | None) -> list[int]:
        """Task indices for ``ids`` (all findings when None), validating every id."""
        if ids is None:
            return list(range(len(self.findings)))
        return [self.index(i) for i in ids]

    def by_group(self, group: str) -> list[Finding]:
        return [f for f in self.findings if f.group == group]


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    """The findings catalogue shipped in ``hyperct.assets`` (cached)."""
    text = resources.files("hyperct.assets").joinpath("findings.yaml").read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    findings = []
    for i, f in enumerate(raw["findings"]):
        findings.append(
            Finding(
                index=i,
                id=f["id"],
                name=f["name"],
                short_name=f["short_name"],
                group=f["group"],
                definition=f["definition"],
                criterion=f.get("criterion"),
                ct_rate_column=f.get("ct_rate_column"),
                paper_auc=dict(f.get("paper_auc") or {}),
                codes=tuple(
                    Code(str(c["scheme"]), str(c["value"]), str(c["meaning"])) for c in f.get("codes", [])
                ),
            )
        )
    return Catalogue(
        version=str(raw["version"]),
        findings=tuple(findings),
        groups=dict(raw["groups"]),
        local_coding_scheme=dict(raw["local_coding_scheme"]),
    )


FINDING_IDS: tuple[str, ...] = tuple(catalogue().ids)
NUM_FINDINGS = len(FINDING_IDS)
