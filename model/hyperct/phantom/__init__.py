"""``hyperct.phantom``: procedural non-contrast chest CT phantoms with known findings.

No public chest CT or clinical weights are available to this project, so it makes its own data:
every phantom is a plausible chest CT (realistic HU, per-patient anatomy and scanner variation)
with any of the 25 HyperCT findings switched on at a chosen severity, the finding's voxel mask,
labels with realistic prevalence (and missing labels), and the latent cardiac state behind the
seven echo-defined labels. Used for the sample data, for every other part's tests, for training the
demo model and for checking saliency maps (the masks say where each finding is).

API::

    ph = generate(seed, findings=None, *, matrix=512, n_slices=None, labels_from_findings=True)
    sample_findings(seed) -> dict[finding_id, severity]
    sample_phantom()  # the bundled sample scan (viewer sample data, screenshots, benchmarks)
    write_dicom_series(ph.volume, out_dir, orientation="axial", slice_order="ascending",
                       transfer_syntax="explicit", localizer=False, second_series=False)
    write_nifti(volume_or_array, path, like=None)
"""

from __future__ import annotations

from hyperct.phantom.bundled import sample_phantom
from hyperct.phantom.generator import GENERATOR_VERSION, Phantom, generate, generate_from_spec
from hyperct.phantom.sampling import sample_findings

__all__ = [
    "GENERATOR_VERSION",
    "Phantom",
    "generate",
    "generate_from_spec",
    "sample_findings",
    "sample_phantom",
    "write_dicom_series",
    "write_nifti",
]


def __getattr__(name: str):  # writers import pydicom/SimpleITK lazily
    if name == "write_dicom_series":
        from hyperct.phantom.dicom import write_dicom_series

        return write_dicom_series
    if name == "write_nifti":
        from hyperct.phantom.nifti import write_nifti

        return write_nifti
    raise AttributeError(name)
