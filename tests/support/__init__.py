"""Helpers shared by the tests: plain functions, classes and constants, imported by name
(``from tests.support.models import tiny_model``). Fixtures stay in the ``conftest.py`` files,
which may call these helpers; no test imports from another folder's ``conftest.py``.

- ``models``: the tiny HyperCT (``TINY_BACKBONE``, ``tiny_model``) and a saved tiny checkpoint.
- ``training``: the tiny training configuration and a fast synthetic ``VolumeDataset``.
- ``cli``: ``run_cli``, the ``hyperct`` command in-process with its output captured.
- ``volumes``: synthetic ``CTVolume`` objects in memory (a small CT, a chest with patient identifiers).
- ``results``: a hand-made ``AnalysisResult`` and saliency maps with known positives and peaks.
- ``phantoms``: ``hyperct.phantom.generate`` cached for small phantoms.
- ``dicom``: the DICOM/NIfTI factory for reader tests (geometry known independently of ``hyperct.io``).
- ``scan_files``: a chest series with patient identifiers and NIfTI files in a chosen voxel order.
- ``archive``: an archive of phantom studies for ``hyperct screen``.
- ``dicom_fuzz`` and ``fuzz_worker``: the header keywords and tag mutation of the reader fuzz tests,
  and the subprocess that reads each mutant under a memory limit.
- ``saliency_oracle``: a tiny model trained so that its evidence is known.
- ``benchmarks``: the scripts of ``benchmarks/`` loaded as modules, for tests of their functions.
"""
