"""``hyperct.report``: the findings of a scan as files a clinician can file and a script can read.

One entry point, used by the viewer's Export buttons and by ``hyperct predict``::

    from hyperct.report import export, saliency_for_export
    saliency = saliency_for_export(loaded, volume, result)          # default method, all findings
    paths = export(result, volume, saliency, "out/", formats=("json", "pdf", "sr"),
                   mode="shareable", overwrite=False, stem=None)    # {"json": Path, ...}

Modules: ``document`` (the JSON document + schema validation), ``deid`` (export modes, link IDs),
``atomic`` (atomic, no-overwrite writes), ``pdf`` + ``keyimages`` (the PDF), ``sr`` (DICOM SR TID
1500), ``maps`` (saliency NIfTI in the input's geometry), ``export`` (the entry point).
Heavy libraries (reportlab, matplotlib, highdicom, nibabel) are imported only when a format needs them.
"""

from __future__ import annotations

from hyperct.report.deid import CLINICAL, MODES, SHAREABLE
from hyperct.report.export import (
    FORMATS,
    SUFFIXES,
    default_stem,
    derived_stem,
    export,
    output_paths,
    render,
    saliency_for_export,
)

__all__ = [
    "CLINICAL",
    "FORMATS",
    "MODES",
    "SHAREABLE",
    "SUFFIXES",
    "default_stem",
    "derived_stem",
    "export",
    "output_paths",
    "render",
    "saliency_for_export",
]
