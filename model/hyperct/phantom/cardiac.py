"""Latent cardiac state -> echocardiographic quantities -> the 7 opportunistic labels and the image.

The seven opportunistic findings are defined, as in the HyperCT paper (Appendix F), by thresholds
on echo quantities. A phantom carries a small latent cardiac state; the echo quantities follow
from it deterministically, the labels threshold them (after a little measurement noise), and the
image (chamber sizes, pulmonary-artery and IVC calibre) is drawn from the same quantities, so every
label has a CT correlate and the labels co-occur as the definitions imply.

Latent components (random mode, each 0 when absent, else a severity in (0, 1]):

* ``systolic`` LV systolic failure (HFrEF), ``dilation`` LV dilation with preserved function,
  ``diastolic`` raised LV filling pressure, ``pulmonary`` pulmonary vascular disease,
  ``rv_own`` intrinsic RV disease.

Echo quantities (true values; labels use them plus measurement noise):

====================  =============================================  ===========================
quantity              driven by                                      CT correlate (image)
====================  =============================================  ===========================
LVEF (%)              61 - 38 systolic                               LV wall thinner (10.5 -> 6.5
                                                                     mm), LV rounder
LVIDd (cm)            4.5 F / 5.0 M + 1.5 systolic + 1.3 dilation    LV cavity radius = LVIDd/2
LAVI (mL/m2)          23 + 28 diastolic + 14 systolic + 4 pulmonary  LA volume = LAVI x BSA
mitral E/A            1.05 + 1.6 (diastolic - 0.4)+ / 0.6           (none; LA follows diastolic)
PASP (mmHg)           24 + 48 pulmonary + 14 systolic + 10 diast.    PA trunk 20 + 0.42 (PASP-25)
                                                                     mm, branches 0.72 x trunk
RAP (mmHg)            3 + 12 (0.7 pulmonary + 0.6 RV dysfunction)    IVC 16 + 1.1 (RAP - 5) mm,
                                                                     RA volume
TR velocity (m/s)     sqrt((PASP - RAP) / 4)  (Bernoulli)            (via PASP: PA, RV)
RV function           RV dysfunction = 0.8 pulmonary + 0.35          RV size x (1 + 0.55 RV
                      systolic + rv_own: normal < 0.3 <= mild <      dilation), RA volume
                      0.55 <= moderate < 0.8 <= severe
====================  =============================================  ===========================

Labels (paper thresholds) and the structures their masks cover:

===============================  ====================================================  ============
finding                          criterion                                             mask
===============================  ====================================================  ============
reduced_lv_systolic_function     LVEF < 50 %                                           LV
ventricular_enlargement          LVIDd > 5.3 cm (F) / > 5.9 cm (M)                     LV
atrial_chamber_enlargement       LAVI > 34 mL/m2                                       LA
left_atrial_filling_pressure     E/A >= 2 or LAVI > 34 or TR velocity > 2.8 m/s        LA (+PA, RV
                                                                                       if by TRV)
pulmonary_hypertension           PASP > 35 mmHg                                        PA, RV
right_atrial_filling_pressure    TR velocity > 3.4 m/s                                 RA, IVC, PA,
                                                                                       RV
reduced_rv_systolic_function     RV function not normal                                RV, RA
===============================  ====================================================  ============

So atrial enlargement implies raised LA filling pressure (same LAVI criterion); a TR velocity above
3.4 m/s (raised RA pressure) implies PASP > 46 mmHg + RAP, i.e. pulmonary hypertension and raised LA
filling pressure; pulmonary hypertension with PASP above ~36 mmHg gives TRV > 2.8 m/s and hence
raised LA filling pressure too (the paper's definitions overlap in exactly this way).

Explicit mode (``generate(seed, ["pulmonary_hypertension", ...])``): a normal baseline (all
quantities inside normal limits with margin) is drawn from the seed, and each requested finding
pushes only its own quantity past its threshold by an amount that grows with severity (see
``from_findings``). A request can still switch on the labels its quantity implies (above).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from hyperct.phantom.heart import HeartShape

CARDIAC_IDS = (
    "reduced_rv_systolic_function",
    "reduced_lv_systolic_function",
    "pulmonary_hypertension",
    "atrial_chamber_enlargement",
    "ventricular_enlargement",
    "left_atrial_filling_pressure",
    "right_atrial_filling_pressure",
)
RV_GRADES = ("normal", "mildly reduced", "moderately reduced", "severely reduced")

LVEF_MIN = 50.0
LVIDD_MAX = {"F": 5.3, "M": 5.9}
LAVI_MAX = 34.0
EA_MIN = 2.0
TRV_LA = 2.8
TRV_RA = 3.4
PASP_MAX = 35.0

MASK_STRUCTURES = {
    "reduced_lv_systolic_function": ("lv",),
    "ventricular_enlargement": ("lv",),
    "atrial_chamber_enlargement": ("la",),
    "left_atrial_filling_pressure": ("la",),
    "pulmonary_hypertension": ("pa", "rv"),
    "right_atrial_filling_pressure": ("ra", "ivc", "pa", "rv"),
    "reduced_rv_systolic_function": ("rv", "ra"),
}


@dataclass(frozen=True)
class Echo:
    """Echocardiographic quantities (true values)."""

    lvef: float
    lvidd: float  # cm
    lavi: float  # mL/m2
    e_a: float
    pasp: float  # mmHg
    rap: float  # mmHg
    rv_dysfunction: float  # 0..1 (graded into RV function)
    rv_dilation: float  # 0..1
    ra_extra: float = 0.0  # extra RA dilation (0..1)

    @property
    def trv(self) -> float:
        return float(np.sqrt(max(self.pasp - self.rap, 1.0) / 4.0))

    @property
    def rv_function(self) -> str:
        d = self.rv_dysfunction
        return RV_GRADES[0 if d < 0.3 else 1 if d < 0.55 else 2 if d < 0.8 else 3]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["trv"] = round(self.trv, 3)
        out["rv_function"] = self.rv_function
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def criteria(e: Echo, sex: str) -> dict[str, bool]:
    """The paper's label definitions applied to echo quantities."""
    return {
        "reduced_rv_systolic_function": e.rv_function != "normal",
        "reduced_lv_systolic_function": e.lvef < LVEF_MIN,
        "pulmonary_hypertension": e.pasp > PASP_MAX,
        "atrial_chamber_enlargement": e.lavi > LAVI_MAX,
        "ventricular_enlargement": e.lvidd > LVIDD_MAX[sex],
        "left_atrial_filling_pressure": e.e_a >= EA_MIN or e.lavi > LAVI_MAX or e.trv > TRV_LA,
        "right_atrial_filling_pressure": e.trv > TRV_RA,
    }


def severities(e: Echo, sex: str) -> dict[str, float]:
    """Severity in (0, 1] of each present cardiac finding (how far past its threshold)."""
    c = criteria(e, sex)

    def f(v):
        return float(np.clip(v, 0.05, 1.0))

    sev = {
        "reduced_rv_systolic_function": f(e.rv_dysfunction),
        "reduced_lv_systolic_function": f((LVEF_MIN - e.lvef) / 25.0),
        "pulmonary_hypertension": f((e.pasp - PASP_MAX) / 40.0),
        "atrial_chamber_enlargement": f((e.lavi - LAVI_MAX) / 30.0),
        "ventricular_enlargement": f((e.lvidd - LVIDD_MAX[sex]) / 1.2),
        "left_atrial_filling_pressure": f(
            max((e.e_a - EA_MIN + 0.3) / 1.2, (e.lavi - LAVI_MAX) / 30.0, (e.trv - TRV_LA) / 1.2)
        ),
        "right_atrial_filling_pressure": f((e.trv - TRV_RA) / 1.0),
    }
    return {k: round(v, 3) for k, v in sev.items() if c[k]}


def mask_structures(e: Echo, sex: str) -> dict[str, tuple[str, ...]]:
    """Structures covered by the mask of each present cardiac finding."""
    c = criteria(e, sex)
    out = {k: v for k, v in MASK_STRUCTURES.items() if c[k]}
    if c["left_atrial_filling_pressure"] and e.trv > TRV_LA:
        out["left_atrial_filling_pressure"] = ("la", "pa", "rv")
    return out


# ------------------------------------------------------------------------------------ sampling
def _baseline(rng: np.random.Generator, sex: str) -> Echo:
    """A normal heart: every quantity inside its normal range with a margin to the threshold."""
    return Echo(
        lvef=float(np.clip(rng.normal(61, 3), 55, 70)),
        lvidd=float(np.clip(rng.normal(4.5 if sex == "F" else 5.0, 0.2), 3.9, LVIDD_MAX[sex] - 0.35)),
        lavi=float(np.clip(rng.normal(23, 3), 15, 29)),
        e_a=float(np.clip(rng.normal(1.1, 0.15), 0.7, 1.5)),
        pasp=float(np.clip(rng.normal(24, 2.5), 16, 29)),
        rap=float(rng.choice([3.0, 5.0])),
        rv_dysfunction=float(np.clip(rng.normal(0.05, 0.04), 0, 0.15)),
        rv_dilation=0.0,
    )


def sample_population(rng: np.random.Generator, sex: str) -> tuple[Echo, dict]:
    """Random mode: a latent state drawn with population prevalence -> echo quantities."""
    base = _baseline(rng, sex)
    lat = {
        "systolic": float(rng.random() < 0.13) * rng.uniform(0.25, 1.0),
        "dilation": float(rng.random() < 0.06) * rng.uniform(0.3, 1.0),
        "diastolic": float(rng.random() < 0.30) * rng.uniform(0.15, 1.0),
        "pulmonary": float(rng.random() < 0.14) * rng.uniform(0.2, 1.0),
        "rv_own": float(rng.random() < 0.05) * rng.uniform(0.35, 1.0),
    }
    s, dl, d, p = lat["systolic"], lat["dilation"], lat["diastolic"], lat["pulmonary"]
    rv_dys = float(
        np.clip(0.8 * p + 0.35 * s + lat["rv_own"] + rng.normal(0, 0.05) + base.rv_dysfunction, 0, 1)
    )
    e = Echo(
        lvef=float(np.clip(base.lvef - 38.0 * s + rng.normal(0, 2), 12, 75)),
        lvidd=float(base.lvidd + 1.5 * s + 1.3 * dl),
        lavi=float(base.lavi + 28.0 * d + 14.0 * s + 4.0 * p),
        e_a=float(base.e_a + 1.6 * max(d - 0.4, 0.0) / 0.6),
        pasp=float(base.pasp + 48.0 * p + 14.0 * s + 10.0 * d),
        rap=float(3.0 + 12.0 * np.clip(0.7 * p + 0.6 * rv_dys - 0.25, 0, 1) + (base.rap - 3.0)),
        rv_dysfunction=rv_dys,
        rv_dilation=float(np.clip(0.8 * rv_dys + 0.5 * p, 0, 1)),
        ra_extra=float(np.clip(0.6 * p + 0.4 * rv_dys, 0, 1)),
    )
    return e, lat


def from_findings(rng: np.random.Generator, sex: str, requested: dict[str, float]) -> Echo:
    """Explicit mode: a normal baseline with each requested cardiac finding pushed past its threshold."""
    e = _baseline(rng, sex)
    r = {k: float(v) for k, v in requested.items() if k in CARDIAC_IDS}
    thr = LVIDD_MAX[sex]
    if "reduced_lv_systolic_function" in r:
        sv = r["reduced_lv_systolic_function"]
        e = replace(e, lvef=46.0 - 26.0 * sv, lvidd=min(e.lvidd + 0.2 + 0.3 * sv, thr - 0.2))
    if "ventricular_enlargement" in r:
        e = replace(e, lvidd=thr + 0.3 + 1.0 * r["ventricular_enlargement"])
    if "left_atrial_filling_pressure" in r:
        sv = r["left_atrial_filling_pressure"]
        e = replace(e, e_a=2.3 + 0.8 * sv, lavi=max(e.lavi, 28.0 + 3.0 * sv))
    if "atrial_chamber_enlargement" in r:
        e = replace(e, lavi=38.0 + 30.0 * r["atrial_chamber_enlargement"])
    if "pulmonary_hypertension" in r:
        sv = r["pulmonary_hypertension"]
        e = replace(e, pasp=max(e.pasp, 39.0 + 6.0 * sv), rv_dilation=max(e.rv_dilation, 0.15 + 0.15 * sv))
    if "right_atrial_filling_pressure" in r:
        sv = r["right_atrial_filling_pressure"]
        trv = 3.6 + 0.7 * sv
        rap = 10.0 + 5.0 * sv
        e = replace(
            e,
            rap=rap,
            pasp=max(e.pasp, 4.0 * trv * trv + rap),
            rv_dilation=max(e.rv_dilation, 0.3 + 0.2 * sv),
            ra_extra=max(e.ra_extra, 0.5 + 0.5 * sv),
        )
    if "reduced_rv_systolic_function" in r:
        sv = r["reduced_rv_systolic_function"]
        e = replace(
            e,
            rv_dysfunction=0.35 + 0.6 * sv,
            rv_dilation=max(e.rv_dilation, 0.35 + 0.5 * sv),
            ra_extra=max(e.ra_extra, 0.3 + 0.3 * sv),
        )
    return e


def measure(e: Echo, rng: np.random.Generator) -> Echo:
    """The echo report: true quantities with measurement noise (labels threshold these)."""
    return replace(
        e,
        lvef=e.lvef + rng.normal(0, 2.5),
        lvidd=e.lvidd + rng.normal(0, 0.12),
        lavi=e.lavi + rng.normal(0, 2.5),
        e_a=e.e_a + rng.normal(0, 0.12),
        pasp=e.pasp + rng.normal(0, 2.5),
        rv_dysfunction=e.rv_dysfunction + rng.normal(0, 0.05),
    )


def heart_shape(e: Echo, bsa: float, cardiomegaly: float = 0.0) -> HeartShape:
    """Image parameters of the heart and great vessels for echo quantities ``e``."""
    low_ef = float(np.clip((55.0 - e.lvef) / 30.0, 0, 1))
    return HeartShape(
        lv_radius=5.0 * e.lvidd,
        lv_wall=10.5 - 4.0 * low_ef,
        lv_elong=1.75 - 0.35 * low_ef - 0.1 * float(np.clip((e.lvidd - 5.5) / 1.5, 0, 1)),
        rv_scale=1.0 + 0.55 * e.rv_dilation,
        la_volume=e.lavi * bsa,
        ra_volume=(25.0 + 1.0 * max(e.rap - 5.0, 0.0) + 22.0 * e.ra_extra) * bsa,
        pa_diam=float(np.clip(20.0 + 0.42 * (e.pasp - 25.0), 17.0, 44.0)),
        ivc_diam=float(np.clip(16.0 + 1.1 * (e.rap - 5.0), 12.0, 32.0)),
        scale=1.0 + (0.14 + 0.2 * cardiomegaly if cardiomegaly > 0 else 0.0),
    )
