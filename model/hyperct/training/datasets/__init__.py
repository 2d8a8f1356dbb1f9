"""Labelled CT datasets for training and evaluation.

Every dataset is a ``VolumeDataset``: ``labels`` is an int8 (N, 25) array in catalogue order with
1 (present), 0 (absent) or -1 (not labelled); ``dataset[i]`` gives ``(pixel_values, labels)`` with
pixel values (55, 3, 144, 144) ready for the model, through the preprocessing cache when one is set.

Sources (``build_dataset(spec)`` with a mapping, ``parse_data_spec(text)`` for the CLI):

* ``{type: manifest, csv: FILE}``: a CSV with a ``path`` (or ``volume``) column and one column
  per finding (the finding id, its name or its CT-RATE column name, case-insensitive) holding
  1 / 0 / -1 or empty (= not labelled). Relative paths resolve against the CSV's folder; a path
  may be a NIfTI/NRRD/MHA file or a DICOM folder. Optional columns: ``id``, ``series_uid``,
  ``rescale_slope`` + ``rescale_intercept``. Other columns are an error unless listed in
  ``ignore_columns`` (or ``unknown_columns: ignore``).
* ``{type: ct-rate, root: DIR, split: train|valid, labels: CSV, metadata: CSV}``: the CT-RATE
  layout ``<root>/<split>/<patient>/<scan>/<volume>.nii.gz`` (e.g.
  ``train/train_1/train_1_a/train_1_a_1.nii.gz``), the ``multi_abnormality_labels`` CSV
  (``VolumeName`` + the 18 finding columns) and the metadata CSV whose ``RescaleSlope`` /
  ``RescaleIntercept`` are applied to the stored values. ``labels``/``metadata`` default to the
  files of the CT-RATE release under ``root`` when present. The 7 opportunistic findings are -1.
  ``skip_missing: true`` drops listed volumes that are not on disk (default: error).
* ``{type: phantom, count: N, first_seed: S, matrix: 256, n_slices: null, findings: null,
  severity: null}``: N synthetic phantoms from ``hyperct.phantom.generate`` with seeds
  S .. S+N-1 (see ``PhantomDataset``), generated once, then cached by generator version, seed
  and parameters; without a cache folder they are kept in memory (3.4 MB each).
  ``pair: normal`` (or ``variant``) makes it 2N volumes in pairs that share the anatomy: item 2j
  is seed S+j as drawn, item 2j+1 its twin, the same patient without any finding (``normal``) or
  with every finding redrawn elsewhere (``variant``, ``lesion_variant=1``); the two differ only
  inside the findings' masks. ``pair: drop_one`` renders the seed's own random draw explicitly
  (same findings and severities) and a twin with ONE conventional finding removed (chosen from the
  seed; not cardiomegaly, whose heart shape moves its surroundings): the two differ only inside that
  finding's mask, and their labels only in that finding.

CLI specs: ``FILE.csv``, ``ct-rate:ROOT:SPLIT``, ``phantom:N:SEED``.

Modules: ``base`` (``VolumeDataset``, label parsing, the file reading the file datasets share),
``manifest``, ``ct_rate``, ``phantoms`` (one per kind) and ``specs`` (``build_dataset``,
``parse_data_spec``). Everything is importable from ``hyperct.training.datasets``.
"""

from hyperct.training.datasets.base import (
    MISSING,
    N_FINDINGS,
    IndexedPixels,
    VolumeDataset,
    parse_label,
)
from hyperct.training.datasets.ct_rate import CT_RATE_SPLITS, CTRateDataset, ct_rate_volume_path
from hyperct.training.datasets.manifest import ManifestDataset
from hyperct.training.datasets.phantoms import (
    DROPPABLE,
    PAIRS,
    PhantomDataset,
    drawn_severities,
    dropped_finding,
    phantom_version,
)
from hyperct.training.datasets.specs import build_dataset, parse_data_spec

__all__ = [
    "CT_RATE_SPLITS",
    "DROPPABLE",
    "MISSING",
    "N_FINDINGS",
    "PAIRS",
    "CTRateDataset",
    "IndexedPixels",
    "ManifestDataset",
    "PhantomDataset",
    "VolumeDataset",
    "build_dataset",
    "ct_rate_volume_path",
    "drawn_severities",
    "dropped_finding",
    "parse_data_spec",
    "parse_label",
    "phantom_version",
]
