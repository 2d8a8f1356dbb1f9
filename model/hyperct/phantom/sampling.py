"""Random findings with realistic prevalence and co-occurrence (random mode of ``generate``).

Conventional findings are drawn from a small latent-factor model: each finding's odds are a base
odds times factors for age, smoking, heart failure (from the latent cardiac state), an acute
infection (15 % of phantoms) and interstitial lung disease (7 %). So emphysema goes with smoking,
consolidation with lung opacity and lymph nodes, cardiomegaly and effusions and septal thickening
with heart failure, fibrosis with bronchiectasis. Severities are ``0.15 + 0.85 Beta(2, 2.2)``.
The marginal prevalences (measured over 20 000 draws) are listed in ``EXPECTED_PREVALENCE``.

Labels: in random mode some labels are missing (-1) as in the paper's data: all seven opportunistic
labels when "no echocardiogram was matched" (25 % of phantoms), and a conventional label for an
absent finding when the "report does not mention it" (6 % per label).
"""

from __future__ import annotations

import numpy as np

from hyperct.phantom import cardiac
from hyperct.phantom._rng import stream
from hyperct.phantom.params import Habitus, sample_habitus

NO_ECHO_RATE = 0.25
NOT_MENTIONED_RATE = 0.06

# base odds (for a 60-year-old non-smoker without heart failure, infection or ILD) and factors
_BASE = {
    "medical_material": 0.11,
    "arterial_wall_calcification": 0.34,
    "cardiomegaly": 0.045,
    "pericardial_effusion": 0.045,
    "coronary_artery_wall_calcification": 0.30,
    "hiatal_hernia": 0.085,
    "lymphadenopathy": 0.09,
    "emphysema": 0.07,
    "atelectasis": 0.19,
    "lung_nodule": 0.27,
    "lung_opacity": 0.13,
    "pulmonary_fibrotic_sequela": 0.06,
    "pleural_effusion": 0.05,
    "mosaic_attenuation_pattern": 0.06,
    "peribronchial_thickening": 0.07,
    "consolidation": 0.045,
    "bronchiectasis": 0.06,
    "interlobular_septal_thickening": 0.045,
}
# multiplicative odds factors: (age per decade, smoker, heart failure, infection, ILD)
_FACTORS = {
    "medical_material": (1.3, 1.0, 2.5, 1.0, 1.0),
    "arterial_wall_calcification": (1.9, 1.6, 1.3, 1.0, 1.0),
    "cardiomegaly": (1.3, 1.0, 9.0, 1.0, 1.5),
    "pericardial_effusion": (1.1, 1.0, 3.5, 1.5, 1.0),
    "coronary_artery_wall_calcification": (1.9, 1.7, 1.8, 1.0, 1.0),
    "hiatal_hernia": (1.4, 1.0, 1.0, 1.0, 1.0),
    "lymphadenopathy": (1.0, 1.2, 1.5, 3.5, 2.5),
    "emphysema": (1.3, 7.0, 1.0, 1.0, 1.0),
    "atelectasis": (1.2, 1.0, 1.8, 2.5, 1.0),
    "lung_nodule": (1.2, 1.7, 1.0, 1.0, 1.0),
    "lung_opacity": (1.0, 1.2, 2.0, 6.0, 4.0),
    "pulmonary_fibrotic_sequela": (1.4, 1.4, 1.0, 1.0, 25.0),
    "pleural_effusion": (1.2, 1.0, 7.0, 2.0, 1.0),
    "mosaic_attenuation_pattern": (1.0, 1.6, 1.0, 1.3, 3.0),
    "peribronchial_thickening": (1.0, 1.8, 1.5, 3.0, 1.0),
    "consolidation": (1.1, 1.2, 1.2, 14.0, 1.0),
    "bronchiectasis": (1.2, 1.3, 1.0, 1.8, 9.0),
    "interlobular_septal_thickening": (1.1, 1.0, 6.0, 1.0, 4.0),
}
CONVENTIONAL_IDS = tuple(_BASE)

# measured with ``measure_prevalence(20000)``: fraction of random-mode phantoms with the finding present
# (ground truth; the labels add echo measurement noise and missing values)
EXPECTED_PREVALENCE: dict[str, float] = {
    "medical_material": 0.1327,
    "arterial_wall_calcification": 0.3448,
    "cardiomegaly": 0.0881,
    "pericardial_effusion": 0.0635,
    "coronary_artery_wall_calcification": 0.3404,
    "hiatal_hernia": 0.0901,
    "lymphadenopathy": 0.1298,
    "emphysema": 0.1701,
    "atelectasis": 0.2155,
    "lung_nodule": 0.2593,
    "lung_opacity": 0.2142,
    "pulmonary_fibrotic_sequela": 0.1082,
    "pleural_effusion": 0.0969,
    "mosaic_attenuation_pattern": 0.0774,
    "peribronchial_thickening": 0.1082,
    "consolidation": 0.1056,
    "bronchiectasis": 0.0953,
    "interlobular_septal_thickening": 0.0864,
    "reduced_rv_systolic_function": 0.212,
    "reduced_lv_systolic_function": 0.1195,
    "pulmonary_hypertension": 0.2003,
    "atrial_chamber_enlargement": 0.2545,
    "ventricular_enlargement": 0.1063,
    "left_atrial_filling_pressure": 0.3555,
    "right_atrial_filling_pressure": 0.0678,
}


def _severity(rng: np.random.Generator) -> float:
    return round(float(0.15 + 0.85 * rng.beta(2.0, 2.2)), 3)


def conventional(rng: np.random.Generator, hab: Habitus, latent: dict) -> dict[str, float]:
    """Draw the conventional findings (id -> severity) for one phantom."""
    age = (hab.age - 60.0) / 10.0
    hf = max(
        latent.get("systolic", 0.0), latent.get("diastolic", 0.0) ** 1.5, latent.get("dilation", 0.0) * 0.6
    )
    infection = float(rng.random() < 0.15)
    ild = float(rng.random() < 0.07)
    out = {}
    for fid, base in _BASE.items():
        fa, fs, fh, fi, fl = _FACTORS[fid]
        odds = base * fa**age * (fs if hab.smoker else 1.0) * fh**hf * fi**infection * fl**ild
        p = odds / (1.0 + odds)
        hit = rng.random() < p
        sev = _severity(rng)
        if hit:
            out[fid] = sev
    return out


def sample_findings(seed: int | np.random.Generator, *, hab: Habitus | None = None) -> dict[str, float]:
    """Random findings (id -> severity in (0, 1]) for phantom ``seed``, as ``generate(seed)`` draws them.

    Includes the cardiac findings implied by the seed's latent cardiac state (with their severities).
    """
    if isinstance(seed, np.random.Generator):
        rng_c, rng_f = seed, seed
        hab = hab or sample_habitus(int(seed.integers(0, 2**31)))
    else:
        hab = hab or sample_habitus(seed)
        rng_c, rng_f = stream(seed, "cardiac"), stream(seed, "findings")
    echo, lat = cardiac.sample_population(rng_c, hab.sex)
    out = conventional(rng_f, hab, lat)
    out.update(cardiac.severities(echo, hab.sex))
    return out


def missing_labels(rng: np.random.Generator, present: dict[str, bool]) -> set[str]:
    """Ids whose label is not available (-1) for one phantom (random mode)."""
    miss = set()
    if rng.random() < NO_ECHO_RATE:
        miss.update(cardiac.CARDIAC_IDS)
    for fid in CONVENTIONAL_IDS:
        r = rng.random()
        if not present.get(fid, False) and r < NOT_MENTIONED_RATE:
            miss.add(fid)
    return miss


def measure_prevalence(n: int = 20000, start: int = 0) -> dict[str, float]:
    """Fraction of phantoms (seeds ``start..start+n``) in which each finding is present."""
    from hyperct.findings import FINDING_IDS

    counts = dict.fromkeys(FINDING_IDS, 0)
    for s in range(start, start + n):
        for fid in sample_findings(s):
            counts[fid] += 1
    return {k: round(v / n, 4) for k, v in counts.items()}
