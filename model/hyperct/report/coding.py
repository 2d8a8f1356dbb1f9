"""Codes of the findings in exports: the catalogue's checked SNOMED CT codes, the local scheme otherwise.

A finding without a checked code is coded in the catalogue's local coding scheme (designator
``99HYPERCT``) with the finding id as the code value and its name as the meaning. The ids are longer
than DICOM's 16-character Code Value, so the SR carries them as Long Code Value (highdicom does this).
"""

from __future__ import annotations

from hyperct.findings import Finding, catalogue

SNOMED = "SCT"


def local_scheme() -> dict:
    """The local coding scheme (designator, name, version) from the catalogue."""
    return dict(catalogue().local_coding_scheme)


def finding_codes(finding: Finding) -> list[dict[str, str]]:
    """Codes for one finding: its checked SCT codes, or one local-scheme code."""
    codes = [{"scheme": c.scheme, "value": c.value, "meaning": c.meaning} for c in finding.codes]
    if codes:
        return codes
    return [{"scheme": local_scheme()["designator"], "value": finding.id, "meaning": finding.name}]


def primary_code(finding: Finding) -> dict[str, str]:
    """The code that names the finding in the SR (the first checked SCT code, else the local one)."""
    return finding_codes(finding)[0]
