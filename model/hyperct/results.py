"""Result records shared by the CLI, the viewer and the reports."""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from hyperct.errors import HyperCTError
from hyperct.operating_points import HIGH_SPECIFICITY, MIN_USEFUL_AUC
from hyperct.volume import QCWarning

CALL_PRESENT, CALL_ABSENT, CALL_NOT_ASSESSED = "present", "absent", "not assessed"
# The finding was scored but the model's output was not a finite number (NaN/inf logit): a failure,
# not the same as "not assessed" (excluded on purpose, e.g. with --findings).
CALL_NO_SCORE = "no valid score"
SCORED_CALLS = (CALL_PRESENT, CALL_ABSENT)
# What a threshold marked "*" means (FindingResult.high_specificity_threshold), in the viewer, the PDF
# and the screening summary alike (the policy: hyperct.operating_points)
HIGH_SPECIFICITY_NOTE = (
    f"Threshold set for {HIGH_SPECIFICITY * 100:g} % specificity: on the model's validation data its score "
    f"did not detect this finding reliably (AUC below {MIN_USEFUL_AUC:.2f} by default, or not above chance), so "
    "it is rarely called."
)


class NoValidScoreError(HyperCTError):
    """The model gave a non-finite output (NaN/inf) for findings it was asked to score."""


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
    # the threshold was set for high specificity because the model's calibration data did not show it
    # detecting this finding (Manifest.high_specificity_findings)
    high_specificity_threshold: bool = False

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
    weights_dtype: str = "fp32"  # the backbone's weights at inference: "fp32" or "bf16" (--dtype bf16)


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

    @property
    def scored(self) -> list[FindingResult]:
        """Findings with a valid probability (present or absent)."""
        return [f for f in self.findings if f.call in SCORED_CALLS]

    @property
    def no_score(self) -> list[FindingResult]:
        """Findings the model was asked to score but gave no finite output for."""
        return [f for f in self.findings if f.call == CALL_NO_SCORE]


_SCORE_HINT = (
    "the model's weights may be broken or the input's values extreme: check the model folder "
    "(hyperct info --model DIR) and the input's QC warnings"
)


def check_scores(result: AnalysisResult, label: str = "") -> NoValidScoreError | None:
    """Raise ``NoValidScoreError`` when no asked finding got a valid score; return one (to raise
    after the outputs are written) when only some did; None when every asked finding was scored."""
    bad = result.no_score
    if not bad:
        return None
    where = f" ({label})" if label else ""
    ids = ", ".join(f.id for f in bad)
    if not result.scored:
        raise NoValidScoreError(
            f"the model produced no valid score (non-finite output) for any of the {len(bad)} finding(s) "
            f"it was asked to score{where}; nothing was written",
            hint=_SCORE_HINT,
        )
    return NoValidScoreError(
        f"the model produced no valid score (non-finite output) for {len(bad)} of "
        f"{len(bad) + len(result.scored)} finding(s): {ids}{where}; they are marked 'no valid score' "
        "in the outputs",
        hint=_SCORE_HINT,
    )
