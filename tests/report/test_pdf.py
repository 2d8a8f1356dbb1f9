"""The PDF report: text, key images, page numbers, export modes, demo warning, reproducibility."""

from __future__ import annotations

import re
from io import BytesIO

import numpy as np
import pytest
from pypdf import PdfReader

from hyperct import DISCLAIMER
from hyperct.findings import catalogue
from hyperct.report.document import build_document
from hyperct.report.pdf import render_pdf
from tests.support.results import POSITIVE, make_result, make_saliency
from tests.support.volumes import PHI_SEARCH, make_volume


def _text(pdf: bytes) -> tuple[PdfReader, list[str], str]:
    reader = PdfReader(BytesIO(pdf))
    pages = [p.extract_text() for p in reader.pages]
    return reader, pages, re.sub(r"\s+", " ", "\n".join(pages))


@pytest.fixture(scope="module")
def shareable_pdf():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERCT_LINK_KEY", "pdf-test-key")
        vol = make_volume()
        result = make_result(vol, demo=True)
        sal = make_saliency(vol)
        doc = build_document(result, vol, sal, mode="shareable")
    return doc, render_pdf(doc, vol, sal), vol, sal


def test_pdf_lists_all_findings_the_model_version_and_the_disclaimer(shareable_pdf):
    doc, pdf, _, _ = shareable_pdf
    assert pdf.startswith(b"%PDF-")
    _, pages, text = _text(pdf)
    for f in catalogue():
        assert f.name in text, f.name
    assert "9.8.7" in text and "HyperCT-test" in text
    assert DISCLAIMER in text
    assert "AI output, not a diagnosis" in pages[0]
    assert doc["model"]["weights_sha256"] in text
    assert "Conventional" in pages[0] and "Opportunistic" in pages[0]


def test_every_page_is_numbered_page_x_of_y(shareable_pdf):
    _, pdf, _, _ = shareable_pdf
    _, pages, _ = _text(pdf)
    n = len(pages)
    assert n >= 2
    for i, page in enumerate(pages, start=1):
        assert f"Page {i} of {n}" in page


def test_demo_model_is_flagged_prominently(shareable_pdf):
    _, pdf, _, _ = shareable_pdf
    _, pages, text = _text(pdf)
    first = re.sub(r"\s+", " ", pages[0])
    assert "DEMO MODEL: trained on synthetic phantoms" in first
    assert "no clinical validity" in first


def test_key_images_of_the_positive_findings_are_embedded(shareable_pdf):
    doc, pdf, vol, _ = shareable_pdf
    reader, _, text = _text(pdf)
    images = [img for page in reader.pages for img in page.images]
    assert len(images) == len(POSITIVE)
    for img in images:
        arr = np.asarray(img.image.convert("RGB"))
        assert arr.shape[0] > 200 and arr.shape[1] > 200
        # the inferno overlay adds warm colours to a grey CT: some pixels are clearly red/orange
        warm = (arr[..., 0].astype(int) - arr[..., 2].astype(int)) > 60
        assert warm.sum() > 100
    for fid in POSITIVE:
        assert f"{catalogue()[fid].name}: p = " in text


def test_user_selected_findings_replace_the_positives_and_no_saliency_means_no_images(shareable_pdf):
    doc, _, vol, sal = shareable_pdf
    pdf = render_pdf(doc, vol, sal, key_findings=["lung_nodule"])
    reader, _, text = _text(pdf)
    assert sum(len(p.images) for p in reader.pages) == 1
    assert "Lung nodule: p = " in text
    pdf = render_pdf(doc, vol, None)
    reader, _, text = _text(pdf)
    assert sum(len(p.images) for p in reader.pages) == 0
    assert "saliency maps were not computed" in text


def test_shareable_pdf_has_no_identifiers(shareable_pdf):
    doc, pdf, _, _ = shareable_pdf
    _, _, text = _text(pdf)
    raw = pdf.decode("latin-1")
    for needle in PHI_SEARCH:
        assert needle not in text and needle not in raw
    assert "Shareable" in text
    assert doc["patient"]["link_ids"]["PatientID"] in text.replace(" ", "")


def test_clinical_pdf_shows_the_identifiers(link_env):
    vol = make_volume()
    doc = build_document(make_result(vol), vol, None, mode="clinical")
    _, pages, _ = _text(render_pdf(doc, vol, None))
    first = re.sub(r"\s+", " ", pages[0])
    assert "QUIXOTE, ALONSO J" in first
    assert "PID-775533" in first and "1947-03-21" in first and "ACC-99120" in first
    assert "Clinical" in first
    assert "DEMO MODEL" not in first


def test_same_document_gives_the_same_bytes_with_its_creation_date(shareable_pdf):
    doc, pdf, vol, sal = shareable_pdf
    assert render_pdf(doc, vol, sal) == pdf
    reader = PdfReader(BytesIO(pdf))
    created = doc["created"][:19].replace("-", "").replace("T", "").replace(":", "")
    assert reader.metadata["/CreationDate"].startswith(f"D:{created}")


def test_unicode_names_print_with_the_bundled_font(link_env):
    vol = make_volume()
    vol.metadata["PatientName"] = "Łukasiewicz^Zoë"
    vol.metadata["SeriesDescription"] = "Thorax – Lunge (Ø 1 mm)"
    doc = build_document(make_result(vol), vol, None, mode="clinical")
    _, pages, _ = _text(render_pdf(doc, vol, None))
    first = re.sub(r"\s+", " ", pages[0])
    assert "Łukasiewicz, Zoë" in first
    assert "Thorax – Lunge (Ø 1 mm)" in first


def test_a_high_specificity_threshold_is_marked_in_the_table_and_explained_under_it(monkeypatch):
    monkeypatch.setenv("HYPERCT_LINK_KEY", "pdf-test-key")
    vol = make_volume()
    result = make_result(vol, demo=True)
    plain_doc = build_document(result, vol, None, mode="shareable")
    _, plain_pages, _ = _text(render_pdf(plain_doc, vol, None))
    assert "99 % specificity" not in plain_pages[0]
    assert not any(f["threshold_high_specificity"] for f in plain_doc["findings"])

    result["lung_nodule"].high_specificity_threshold = True
    doc = build_document(result, vol, None, mode="shareable")  # validated against the schema
    assert [f["id"] for f in doc["findings"] if f["threshold_high_specificity"]] == ["lung_nodule"]
    _, pages, _ = _text(render_pdf(doc, vol, None))
    page1 = re.sub(r"\s+", " ", pages[0])
    threshold = f"{result['lung_nodule'].threshold:.2f} *"
    assert threshold in page1 and page1.count(" *") == 2  # the nodule's row and the legend
    assert "Threshold set for 99 % specificity" in page1 and "did not detect" in page1
    # the findings table, legend included, still fits on page 1
    assert catalogue()["right_atrial_filling_pressure"].name in page1
