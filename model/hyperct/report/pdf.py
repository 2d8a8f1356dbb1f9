"""The PDF report (reportlab, A4, bundled DejaVu Sans so any name or text in the input prints).

Page 1: the "AI output, not a diagnosis" banner (and a demo-model warning), the patient/study block
per export mode, a one-line summary and the 25 findings grouped (Conventional / Opportunistic) with
probability bars and threshold marks. Then: key images (axial slice through the saliency peak of
the positive or chosen findings, CT + inferno overlay + colour bar), the model card summary, input
and QC warnings, intended use and limitations. Every page: header, footer with the disclaimer and
"Page x of y".

The PDF's metadata dates are the report's creation time, and reportlab's invariant mode is on, so
the same document gives the same bytes (the viewer's and the CLI's exports of a scan are equal).
"""

from __future__ import annotations

import datetime as _dt
from functools import lru_cache
from importlib import resources
from io import BytesIO

from hyperct import DISCLAIMER
from hyperct.report import deid
from hyperct.report.document import format_name
from hyperct.results import HIGH_SPECIFICITY_NOTE
from hyperct.saliency import METHODS

FONT, FONT_BOLD, FONT_ITALIC = "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique"
MAX_KEY_IMAGES = 4

# Palette
INK = "#1d2430"
MUTED = "#5b6675"
RULE = "#c9d1dc"
HEAD_BG = "#1f3a5f"
ROW_ALT = "#f4f6f9"
PRESENT_BG = "#fdecea"
PRESENT = "#b3261e"
ABSENT_BAR = "#7f98b8"
BANNER_RED = "#b3261e"
BANNER_AMBER = "#fff4d6"
AMBER_EDGE = "#d49a00"


@lru_cache(maxsize=1)
def register_fonts() -> None:
    """Register the bundled DejaVu Sans faces with reportlab (once)."""
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    fonts = resources.files("hyperct.assets").joinpath("fonts")
    for name, file in (
        (FONT, "DejaVuSans.ttf"),
        (FONT_BOLD, "DejaVuSans-Bold.ttf"),
        (FONT_ITALIC, "DejaVuSans-Oblique.ttf"),
    ):
        with resources.as_file(fonts.joinpath(file)) as path:
            pdfmetrics.registerFont(TTFont(name, str(path)))
    addMapping(FONT, 0, 0, FONT)
    addMapping(FONT, 1, 0, FONT_BOLD)
    addMapping(FONT, 0, 1, FONT_ITALIC)
    addMapping(FONT, 1, 1, FONT_BOLD)


def _styles():
    from reportlab.lib.colors import HexColor
    from reportlab.lib.styles import ParagraphStyle

    base = ParagraphStyle("base", fontName=FONT, fontSize=8.5, leading=11, textColor=HexColor(INK))
    return {
        "base": base,
        "small": ParagraphStyle("small", parent=base, fontSize=7.5, leading=9.5),
        "muted": ParagraphStyle("muted", parent=base, fontSize=7.5, leading=9.5, textColor=HexColor(MUTED)),
        "cell": ParagraphStyle("cell", parent=base, fontSize=8, leading=10),
        "cellb": ParagraphStyle("cellb", parent=base, fontName=FONT_BOLD, fontSize=8, leading=10),
        "mono": ParagraphStyle("mono", parent=base, fontSize=7, leading=9),
        "h1": ParagraphStyle("h1", parent=base, fontName=FONT_BOLD, fontSize=15, leading=19),
        "h2": ParagraphStyle(
            "h2",
            parent=base,
            fontName=FONT_BOLD,
            fontSize=10.5,
            leading=13,
            spaceBefore=8,
            spaceAfter=4,
            textColor=HexColor(HEAD_BG),
        ),
        "banner": ParagraphStyle(
            "banner", parent=base, fontName=FONT_BOLD, fontSize=12, leading=15, textColor=HexColor("#ffffff")
        ),
        "banner_sub": ParagraphStyle(
            "banner_sub", parent=base, fontSize=7.5, leading=9.5, textColor=HexColor("#ffffff")
        ),
        "demo": ParagraphStyle("demo", parent=base, fontName=FONT_BOLD, fontSize=8.5, leading=11),
        "caption": ParagraphStyle("caption", parent=base, fontSize=7.5, leading=9.5),
        "bullet": ParagraphStyle("bullet", parent=base, leftIndent=10, bulletIndent=2, spaceAfter=1.5),
    }


def _esc(text) -> str:
    from xml.sax.saxutils import escape

    return escape("" if text is None else str(text))


def _fmt_created(created: str) -> str:
    try:
        t = _dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return created
    return t.strftime("%Y-%m-%d %H:%M %Z").strip()


# -- flowables ------------------------------------------------------------------------------------


def _probability_bar(p: float | None, threshold: float, present: bool, width: float, height: float = 7.0):
    from reportlab.graphics.shapes import Drawing, Line, Rect
    from reportlab.lib.colors import HexColor

    d = Drawing(width, height + 2)
    d.add(Rect(0, 1, width, height, fillColor=HexColor("#e7ebf0"), strokeColor=None))
    if p is not None:
        d.add(
            Rect(
                0,
                1,
                max(0.6, width * p),
                height,
                fillColor=HexColor(PRESENT if present else ABSENT_BAR),
                strokeColor=None,
            )
        )
    x = width * threshold
    d.add(Line(x, -0.5, x, height + 2.5, strokeColor=HexColor(INK), strokeWidth=1.1))
    return d


def _banner(doc: dict, st, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    rows = [
        [Paragraph(_esc(DISCLAIMER.rstrip(".")), st["banner"])],
        [
            Paragraph(
                "Probabilities from an AI model for research and demonstration. Every finding must be "
                "confirmed on the images by a qualified reader; absence of a call does not exclude disease.",
                st["banner_sub"],
            )
        ],
    ]
    t = Table(rows, colWidths=[width])
    t.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), HexColor(BANNER_RED)),
                ("LEFTPADDING", (0, 0), (-1, -1), 9),
                ("TOPPADDING", (0, 0), (-1, 0), 6),
                ("BOTTOMPADDING", (0, -1), (-1, -1), 6),
                ("TOPPADDING", (0, 1), (-1, 1), 0),
            ]
        )
    )
    out = [t]
    if doc["model"]["demo"]:
        out.append(_demo_box(st, width))
    return out


def _demo_box(st, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    t = Table(
        [
            [
                Paragraph(
                    "DEMO MODEL: trained on synthetic phantoms only. These results have no clinical validity "
                    "and must not be used for patient care.",
                    st["demo"],
                )
            ]
        ],
        colWidths=[width],
    )
    t.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), HexColor(BANNER_AMBER)),
                ("BOX", (0, 0), (-1, -1), 1.2, HexColor(AMBER_EDGE)),
                ("LEFTPADDING", (0, 0), (-1, -1), 9),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
            ]
        )
    )
    return t


def _kv_table(title: str, rows: list[tuple[str, str]], st, width: float):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    data = [[Paragraph(_esc(title), st["cellb"]), ""]]
    for k, v in rows:
        data.append([Paragraph(_esc(k), st["muted"]), Paragraph(v, st["cell"])])
    t = Table(data, colWidths=[width * 0.34, width * 0.66])
    t.setStyle(
        TableStyle(
            [
                ("SPAN", (0, 0), (-1, 0)),
                ("LINEBELOW", (0, 0), (-1, 0), 0.8, HexColor(HEAD_BG)),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 2),
                ("RIGHTPADDING", (0, 0), (-1, -1), 4),
                ("TOPPADDING", (0, 0), (-1, -1), 1.2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.2),
                ("BOTTOMPADDING", (0, 0), (-1, 0), 3),
            ]
        )
    )
    return t


def _uid(text) -> str:
    """A UID in small type that may wrap anywhere."""
    if not text:
        return "-"
    return f'<font size="6.5">{_esc(text)}</font>'


def _patient_rows(doc: dict) -> list[tuple[str, str]]:
    p = doc["patient"]
    sex_age = " / ".join(x for x in (p.get("sex"), _age(p.get("age"))) if x) or "-"
    if doc["export"]["mode"] == deid.CLINICAL:
        ids = p["identifiers"]
        return [
            ("Export mode", "<b>Clinical</b> (identifiers kept)"),
            ("Name", _esc(deid.format_person_name(ids["PatientName"])) if ids.get("PatientName") else "-"),
            ("Patient ID", _esc(ids.get("PatientID", "-"))),
            (
                "Birth date",
                _esc(deid.format_da(ids["PatientBirthDate"])) if ids.get("PatientBirthDate") else "-",
            ),
            ("Sex / age", _esc(sex_age)),
            ("Accession", _esc(ids.get("AccessionNumber", "-"))),
        ]
    links = p["link_ids"]
    removed = "name, birth date and IDs removed" if links else "none in the input"
    return [
        ("Export mode", "<b>Shareable</b> (de-identified)"),
        ("Identifiers", removed),
        ("Patient link ID", _uid(links.get("PatientID")) if links.get("PatientID") else "-"),
        ("Accession link ID", _uid(links.get("AccessionNumber")) if links.get("AccessionNumber") else "-"),
        ("Sex / age", _esc(sex_age)),
    ]


def _age(age) -> str | None:
    if not age:
        return None
    s = str(age)
    units = {"Y": "y", "M": "mo", "W": "wk", "D": "d"}
    if len(s) == 4 and s[:3].isdigit() and s[3] in units:
        return f"{int(s[:3])} {units[s[3]]}"
    return s


def _study_rows(doc: dict) -> list[tuple[str, str]]:
    i = doc["input"]
    sp = i["spacing_mm"]
    scanner = " ".join(x for x in (i.get("manufacturer"), i.get("scanner_model")) if x) or "-"
    acq = ", ".join(
        x
        for x in (
            f"kernel {i['kernel']}" if i.get("kernel") else None,
            f"{i['kvp']:g} kV" if i.get("kvp") else None,
        )
        if x
    )
    return [
        ("Study date", _esc(deid.format_da(i["StudyDate"])) if i.get("StudyDate") else "-"),
        (
            "Series",
            "description removed (shareable)"
            if doc["export"]["mode"] == deid.SHAREABLE
            else _esc(i.get("SeriesDescription") or "-"),
        ),
        (
            "Input",
            _esc(f"{format_name(i['type'])}, {i['slices']} slices of {i['matrix'][0]} x {i['matrix'][1]}"),
        ),
        (
            "Voxel size",
            _esc(f"{sp['column']:.2f} x {sp['row']:.2f} x {sp['slice']:.2f} mm")
            + (f" (slice thickness {i['slice_thickness_mm']:g} mm)" if i.get("slice_thickness_mm") else ""),
        ),
        ("Scanner", _esc(scanner + (f"; {acq}" if acq else ""))),
        ("Study UID", _uid(i.get("StudyInstanceUID"))),
        ("Series UID", _uid(i.get("SeriesInstanceUID"))),
    ]


def _summary(doc: dict, st):
    from reportlab.platypus import Paragraph

    pos = [f for f in doc["findings"] if f["call"] == "present"]
    n_assessed = doc["summary"]["assessed"]
    if pos:
        items = ", ".join(f"<b>{_esc(f['name'])}</b> ({f['probability']:.2f})" for f in pos)
        text = (
            f"{len(pos)} of {n_assessed} assessed findings at or above their threshold: {items}. "
            "Key images follow the table."
        )
    else:
        text = f"None of the {n_assessed} assessed findings is at or above its threshold."
    no_score = doc["summary"].get("no_valid_score") or []
    n_excluded = len(doc["findings"]) - n_assessed - len(no_score)
    if no_score:
        text += (
            f' <font color="{PRESENT}"><b>{len(no_score)} finding(s) got no valid score</b></font> '
            "(the model's output was not a finite number): these are failures, not negatives."
        )
    if n_excluded:
        text += f" {n_excluded} finding(s) were not assessed (excluded from scoring)."
    return Paragraph(text, st["base"])


def _scope_box(doc: dict, st, width: float):
    """Out-of-scope QC warnings on page 1, beside the findings (None when there are none)."""
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    from hyperct.io.quality import out_of_scope

    scope = out_of_scope(doc["input"]["qc_warnings"])
    if not scope:
        return None
    rows = [
        [
            Paragraph(
                f'<font color="{PRESENT}"><b>Input out of scope: the results below may be meaningless.</b></font> '
                "The model is meant for non-contrast chest CT in Hounsfield units; quality control found:",
                st["base"],
            )
        ]
    ]
    for w in scope:
        rows.append(
            [Paragraph(f"<b>{_esc(w.code)}</b>: {_esc(w.message)}", st["bullet"], bulletText="\u2022")]
        )
    t = Table(rows, colWidths=[width])
    t.setStyle(
        TableStyle(
            [
                ("BACKGROUND", (0, 0), (-1, -1), HexColor(PRESENT_BG)),
                ("BOX", (0, 0), (-1, -1), 1.4, HexColor(PRESENT)),
                ("LEFTPADDING", (0, 0), (-1, -1), 8),
                ("TOPPADDING", (0, 0), (0, 0), 5),
                ("TOPPADDING", (0, 1), (-1, -1), 1),
                ("BOTTOMPADDING", (0, -1), (-1, -1), 5),
            ]
        )
    )
    return t


def _selection_line(doc: dict, st):
    """One line on page 1: which series of the input were not used for this report, and why."""
    from reportlab.platypus import Paragraph

    sel = doc["input"].get("series_selection")
    if not sel or not sel.get("skipped"):
        return None
    parts = []
    for sk in sel["skipped"]:
        num = f"series {sk['SeriesNumber']}" if sk.get("SeriesNumber") is not None else "a series"
        what = ", ".join(
            x
            for x in (
                sk.get("modality"),
                f"{sk['slices']} slices" if sk.get("slices") else None,
                f"{sk['slice_thickness_mm']:g} mm" if sk.get("slice_thickness_mm") else None,
            )
            if x
        )
        parts.append(f"{num}{f' ({what})' if what else ''}: {sk['reason']}")
    text = f"<b>Skipped series ({len(parts)}):</b> " + _esc("; ".join(parts)) + "."
    return Paragraph(text, st["small"])


def _findings_table(doc: dict, st, width: float, pad: float = 1.6):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    bar_w = width * 0.26
    col = [width * 0.37, bar_w + 8, width * 0.09, width * 0.12, width * 0.16 - 8]
    head = ["Finding", "Probability", "p", "Threshold", "Call"]
    data = [[Paragraph(f'<font color="#ffffff"><b>{h}</b></font>', st["cell"]) for h in head]]
    style = [
        ("BACKGROUND", (0, 0), (-1, 0), HexColor(HEAD_BG)),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("ALIGN", (2, 0), (3, -1), "RIGHT"),
        ("LEFTPADDING", (0, 0), (-1, -1), 4),
        ("RIGHTPADDING", (0, 0), (-1, -1), 4),
        ("TOPPADDING", (0, 0), (-1, -1), pad),
        ("BOTTOMPADDING", (0, 0), (-1, -1), pad),
        ("LINEBELOW", (0, -1), (-1, -1), 0.6, HexColor(RULE)),
    ]
    for group, label in (
        ("conventional", "Conventional (radiological) findings"),
        ("opportunistic", "Opportunistic (cardiac) findings: echocardiographic labels predicted from CT"),
    ):
        r = len(data)
        data.append([Paragraph(f"<b>{_esc(label)}</b>", st["cell"]), "", "", "", ""])
        style += [
            ("SPAN", (0, r), (-1, r)),
            ("BACKGROUND", (0, r), (-1, r), HexColor("#dfe6ef")),
            ("TOPPADDING", (0, r), (-1, r), 3),
            ("BOTTOMPADDING", (0, r), (-1, r), 3),
        ]
        rows = [f for f in doc["findings"] if f["group"] == group]
        for n, f in enumerate(rows):
            r = len(data)
            present = f["call"] == "present"
            name_style = st["cellb"] if present else st["cell"]
            codes = f["codes"][0]
            code = f"SCT {codes['value']}" if codes["scheme"] == "SCT" else ""
            name = _esc(f["name"])
            if code:
                name += f' <font size="6" color="{MUTED}">{_esc(code)}</font>'
            p = f["probability"]
            call = {
                "present": f'<font color="{PRESENT}"><b>Present</b></font>',
                "absent": "Absent",
                "not assessed": f'<font color="{MUTED}"><i>Not assessed</i></font>',
                "no valid score": f'<font color="{PRESENT}"><b><i>No valid score</i></b></font>',
            }[f["call"]]
            data.append(
                [
                    Paragraph(name, name_style),
                    _probability_bar(p, f["threshold"], present, bar_w),
                    Paragraph(
                        f"<b>{p:.3f}</b>" if present else (f"{p:.3f}" if p is not None else "-"), st["cell"]
                    ),
                    Paragraph(
                        f"{f['threshold']:.2f}" + (" *" if f.get("threshold_high_specificity") else ""),
                        st["cell"],
                    ),
                    Paragraph(call, st["cell"]),
                ]
            )
            if present:
                style.append(("BACKGROUND", (0, r), (-1, r), HexColor(PRESENT_BG)))
            elif n % 2 == 1:
                style.append(("BACKGROUND", (0, r), (-1, r), HexColor(ROW_ALT)))
    t = Table(data, colWidths=col, repeatRows=1)
    t.setStyle(TableStyle(style))
    return t


def _key_image_grid(doc, volume, saliency, finding_ids, st, width):
    from reportlab.platypus import Image, Paragraph, Spacer, Table, TableStyle

    from hyperct.report.keyimages import key_images

    out = []
    if volume is None or saliency is None:
        out.append(Paragraph("No key images: saliency maps were not computed for this export.", st["muted"]))
        return out
    if not finding_ids:
        out.append(
            Paragraph(
                "No key images: no finding is at or above its threshold (and none was selected).", st["muted"]
            )
        )
        return out
    images = key_images(volume, saliency, doc, finding_ids[:MAX_KEY_IMAGES])
    if not images:
        out.append(Paragraph("No key images: no saliency map for the selected findings.", st["muted"]))
        return out
    method = {m.id: m.name for m in METHODS.values()}
    cell_w = width * 0.46
    cells = []
    for f, img in images:
        s = f["saliency"] or {}
        h = cell_w * img.height_px / img.width_px
        lps = s.get("peak_lps_mm")
        caption = (
            f"<b>{_esc(f['name'])}</b>: p = {f['probability']:.3f} ({f['call']})<br/>"
            f"Axial slice {img.slice_index + 1} of {volume.shape[0]}, {img.window} window; "
            f"{method.get(s.get('method'), s.get('method', ''))} peak (+) at "
            + (f"LPS ({lps[0]:.1f}, {lps[1]:.1f}, {lps[2]:.1f}) mm" if lps else "-")
        )
        cells.append([Image(BytesIO(img.png), width=cell_w, height=h), Paragraph(caption, st["caption"])])
    rows = []
    for n in range(0, len(cells), 2):
        pair = cells[n : n + 2]
        while len(pair) < 2:
            pair.append(["", ""])
        rows.append([pair[0][0], pair[1][0]])
        rows.append([pair[0][1], pair[1][1]])
    t = Table(rows, colWidths=[cell_w + 8, cell_w + 8], hAlign="LEFT")
    t.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 6),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
            ]
        )
    )
    out += [t, Spacer(1, 2)]
    return out


def _model_rows(doc: dict) -> list[tuple[str, str]]:
    m = doc["model"]
    rows = [
        ("Model", _esc(f"{m['name']}, version {m['version']}")),
        ("Weights sha256", f'<font size="6.5">{_esc(m["weights_sha256"])}</font>'),
        ("Backbone", _esc(m["backbone"])),
        ("Thresholds", _esc(m["threshold_method"] or "-")),
        ("Device", _esc(m["device"])),
    ]
    if m["demo"]:
        rows.append(
            (
                "Demo model",
                f'<font color="{PRESENT}"><b>Yes: trained on synthetic phantoms; no clinical validity.</b></font>',
            )
        )
    else:
        rows.append(("Demo model", "No"))
    rows.append(("Software", _esc(f"{doc['software']['name']} {doc['software']['version']}")))
    return rows


class _NumberedCanvasFactory:
    """A reportlab canvas that writes 'Page x of y' and the header/footer once the page count is known."""

    def __new__(cls, doc: dict):
        from reportlab.lib.colors import HexColor
        from reportlab.pdfgen.canvas import Canvas

        report = doc

        class NumberedCanvas(Canvas):
            def __init__(self, *args, **kwargs):
                kwargs["invariant"] = 1
                super().__init__(*args, **kwargs)
                self._saved = []
                _set_timestamp(self, report["created"])

            def showPage(self):
                self._saved.append(dict(self.__dict__))
                self._startPage()

            def save(self):
                total = len(self._saved)
                for state in self._saved:
                    self.__dict__.update(state)
                    self._decorate(total)
                    Canvas.showPage(self)
                Canvas.save(self)

            def _decorate(self, total: int):
                w, h = self._pagesize
                self.saveState()
                self.setFillColor(HexColor(HEAD_BG))
                self.rect(0, h - 30, w, 30, stroke=0, fill=1)
                self.setFillColor(HexColor("#ffffff"))
                self.setFont(FONT_BOLD, 11)
                self.drawString(36, h - 19.5, "HyperCT Viewer  |  AI findings report")
                self.setFont(FONT, 7.5)
                self.drawRightString(
                    w - 36,
                    h - 19,
                    f"Report {report['report_id'][:8]}  |  {_fmt_created(report['created'])}",
                )
                self.setStrokeColor(HexColor(RULE))
                self.setLineWidth(0.6)
                self.line(36, 40, w - 36, 40)
                self.setFillColor(HexColor(MUTED))
                self.setFont(FONT, 6.5)
                self.drawString(
                    36,
                    29,
                    f"{report['software']['name']} {report['software']['version']}  |  report {report['report_id']}"
                    f"  |  {report['export']['mode']} export",
                )
                self.setFont(FONT_BOLD, 7)
                self.setFillColor(HexColor(PRESENT))
                self.drawString(36, 19, DISCLAIMER)
                self.setFillColor(HexColor(INK))
                self.setFont(FONT, 7.5)
                self.drawRightString(w - 36, 24, f"Page {self._pageNumber} of {total}")
                self.restoreState()

        return NumberedCanvas


def _set_timestamp(canvas, created: str) -> None:
    """Make the PDF's CreationDate/ModDate the report's creation time (reportlab invariant mode)."""
    try:
        t = _dt.datetime.fromisoformat(created.replace("Z", "+00:00")).astimezone(_dt.timezone.utc)
        ts = canvas._doc._timeStamp
        ts.t = t.timestamp()
        ts.lt = t.timetuple()
        ts.YMDhms = tuple(ts.lt)[:6]
        ts.dhh = ts.dmm = 0
        ts.tzname = "UTC"
    except Exception:  # noqa: BLE001 - private reportlab API: keep the invariant date if it changes
        pass


def default_key_findings(doc: dict) -> list[str]:
    """The positive findings, most probable first."""
    pos = [f for f in doc["findings"] if f["call"] == "present"]
    return [f["id"] for f in sorted(pos, key=lambda f: -(f["probability"] or 0))]


def render_pdf(doc: dict, volume=None, saliency=None, *, key_findings: list[str] | None = None) -> bytes:
    """The PDF report of a document (``build_document``) as bytes.

    ``key_findings``: findings to show key images for (default: the positives, most probable
    first); at most ``MAX_KEY_IMAGES`` are drawn, and only those with a saliency map.
    """
    from reportlab.lib.pagesizes import A4
    from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    register_fonts()
    st = _styles()
    buf = BytesIO()
    margin = 36
    title = f"HyperCT findings report {doc['report_id']}"
    template = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=42,
        bottomMargin=50,
        title=title,
        author=f"{doc['software']['name']} {doc['software']['version']}",
        subject=DISCLAIMER,
        creator=f"{doc['software']['name']} {doc['software']['version']}",
        invariant=1,
    )
    width = A4[0] - 2 * margin
    story = []
    story += _banner(doc, st, width)
    story.append(Spacer(1, 8))
    half = (width - 14) / 2
    blocks = Table(
        [
            [
                _kv_table("Patient", _patient_rows(doc), st, half),
                _kv_table("Study and series", _study_rows(doc), st, half),
            ]
        ],
        colWidths=[half + 14, half],
    )
    blocks.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 0),
            ]
        )
    )
    story += [blocks, Spacer(1, 4)]
    line = _selection_line(doc, st)
    if line is not None:
        story += [line, Spacer(1, 4)]
    story.append(Paragraph("Findings", st["h2"]))
    scope = _scope_box(doc, st, width)
    if scope is not None:
        story += [scope, Spacer(1, 4)]
    story.append(_summary(doc, st))
    story.append(Spacer(1, 4))
    # rows a little tighter when the scope box or the skipped-series line takes room: the table stays on page 1
    story.append(_findings_table(doc, st, width, pad=1.6 if scope is None and line is None else 1.0))
    legend = (
        "Bars: model probability (red when at or above the threshold); black tick: the finding's threshold. "
        "Call = Present when probability \u2265 threshold."
    )
    if any(f.get("threshold_high_specificity") for f in doc["findings"]):
        legend += f" * {HIGH_SPECIFICITY_NOTE}"
    story.append(Paragraph(legend, st["muted"]))

    keys = key_findings if key_findings is not None else default_key_findings(doc)
    key_block = [Paragraph("Key images", st["h2"])]
    key_block.append(
        Paragraph(
            "Axial slice through the saliency peak of each "
            + ("selected" if key_findings is not None else "positive")
            + " finding (up to four). The overlay shows where the model's evidence for the finding lies (the "
            "method is named under each image), normalised to the scan's maximum; it is not a lesion outline.",
            st["muted"],
        )
    )
    key_block.append(Spacer(1, 4))
    key_block += _key_image_grid(doc, volume, saliency, keys, st, width)
    story.append(KeepTogether(key_block))

    model_block = [Paragraph("Model", st["h2"]), _kv_table("Model card summary", _model_rows(doc), st, width)]
    if doc["model"]["demo"]:
        model_block += [Spacer(1, 4), _demo_box(st, width)]
    story.append(KeepTogether(model_block))

    qc = doc["input"]["qc_warnings"]
    qc_block = [Paragraph("Input quality control", st["h2"])]
    if qc:
        for w in qc:
            qc_block.append(
                Paragraph(
                    f"<b>{_esc(w['code'])}</b>: {_esc(w['message'])}", st["bullet"], bulletText="\u2022"
                )
            )
    else:
        qc_block.append(Paragraph("No quality-control warnings.", st["base"]))
    story.append(KeepTogether(qc_block))

    use = [
        Paragraph("Intended use and limitations", st["h2"]),
        Paragraph(_esc(doc["model"]["intended_use"]), st["base"]),
    ]
    use.append(Spacer(1, 3))
    for text in doc["limitations"]:
        use.append(Paragraph(_esc(text), st["bullet"], bulletText="\u2022"))
    story.append(KeepTogether(use))

    exp = doc["export"]
    story.append(
        KeepTogether(
            [
                Paragraph("About this document", st["h2"]),
                Paragraph(
                    _esc(exp["description"])
                    + (
                        f" Link key source: {_esc(exp['link_key_source'])}."
                        if exp.get("link_key_source")
                        else ""
                    ),
                    st["small"],
                ),
                Paragraph(
                    _esc(
                        f"Report {doc['report_id']}, created {doc['created']}. The machine-readable version of this "
                        f"report follows the JSON schema {doc['schema']}."
                    ),
                    st["small"],
                ),
                Spacer(1, 6),
                _final_disclaimer(st, width),
            ]
        )
    )
    template.build(story, canvasmaker=_NumberedCanvasFactory(doc))
    return buf.getvalue()


def _final_disclaimer(st, width):
    from reportlab.lib.colors import HexColor
    from reportlab.platypus import Paragraph, Table, TableStyle

    t = Table([[Paragraph(f"<b>{_esc(DISCLAIMER)}</b>", st["base"])]], colWidths=[width])
    t.setStyle(
        TableStyle(
            [
                ("BOX", (0, 0), (-1, -1), 1, HexColor(BANNER_RED)),
                ("LEFTPADDING", (0, 0), (-1, -1), 8),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
            ]
        )
    )
    return t
