"""Result records shared by the CLI, the viewer and the reports."""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from hyperct.volume import QCWarning

CALL_PRESENT, CALL_ABSENT, CALL_NOT_ASSESSED = "present", "absent", "not assessed"


@dataclass
class SaliencySummary:
    """Where the saliency map of one finding peaks."""

    method: str
    key_slice: int  # canonical slice index k of the maximum
    peak_index: tuple[int, int, int]  # canonical (k, j, i)
    peak_lps_mm: tuple[float, float, float]  # DICOM patient coordinates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FindingResult:
    index: int
    id: str
    name: str
    group: str
    probability: float | None
    logit: float | None
    threshold: float
    call: str
    saliency: SaliencySummary | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["saliency"] = self.saliency.to_dict() if self.saliency else None
        return d


@dataclass
class ModelInfo:
    name: str
    version: str
    weights_sha256: str
    backbone: str
    is_demo: bool
    intended_use: str
    threshold_method: str
    directory: str


@dataclass
class AnalysisResult:
    """All 25 findings for one scan, with what produced them."""

    findings: list[FindingResult]
    model: ModelInfo
    device: str
    seconds: float
    input: dict[str, Any]
    preprocessing: dict[str, Any]
    warnings: list[QCWarning] = field(default_factory=list)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    report_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __getitem__(self, finding_id: str) -> FindingResult:
        for f in self.findings:
            if f.id == finding_id:
                return f
        raise KeyError(finding_id)

    @property
    def positives(self) -> list[FindingResult]:
        return [f for f in self.findings if f.call == CALL_PRESENT]

    def probabilities(self) -> dict[str, float | None]:
        return {f.id: f.probability for f in self.findings}
