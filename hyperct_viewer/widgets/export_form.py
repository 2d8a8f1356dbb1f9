"""The export settings of the Findings dock as a magicgui form.

What an export writes is chosen here (file types, folder, identifiers, replacing), so the form is a
magicgui ``Container``: napari users read and set it as they do any magicgui widget
(``form.folder.value = "~/reports"``, ``form.pdf.value = False``, ``form.settings()``), and the
Findings dock reads ``settings()`` when its Export button is pressed. The form does no work itself:
the export runs as a job of the dock (``hyperct_viewer.jobs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, PushButton

from hyperct.report.deid import CLINICAL, SHAREABLE

DEFAULT_FOLDER = Path.home() / "hyperct-reports"
MODE_CHOICES = [
    ("Shareable (no patient identifiers)", SHAREABLE),
    ("Clinical (identifiers kept)", CLINICAL),
]
# (format, check-box text, tooltip, ticked by default); the formats of hyperct.report.export
FILE_TYPES = (
    ("json", "JSON", "The report document (<stem>.hyperct.json)", True),
    ("pdf", "PDF", "The PDF report with key images (<stem>.hyperct.pdf)", True),
    ("sr", "DICOM SR", "DICOM Comprehensive 3D SR, TID 1500 (<stem>.hyperct.sr.dcm)", False),
    ("fhir", "FHIR", "FHIR R4 Bundle (<stem>.hyperct.fhir.json)", False),
)
SR_NEEDS_DICOM = "DICOM SR needs a DICOM input; the selected scan was not read from DICOM."
MAPS_TIP = (
    "The saliency maps of the positive findings as NIfTI in the scan's own geometry "
    "(<stem>.saliency.<finding>.nii.gz), as 'hyperct predict --saliency' writes them"
)


@dataclass(frozen=True)
class ExportSettings:
    """What the form says an export writes."""

    formats: tuple[str, ...]  # report formats, in hyperct.report.export's names
    maps: bool  # saliency maps (NIfTI) of the positive findings
    folder: Path
    mode: str  # "shareable" or "clinical"
    overwrite: bool  # replace existing files without asking

    @property
    def empty(self) -> bool:
        return not self.formats and not self.maps


class ExportForm(Container):
    """Mode, folder, file types and overwrite for an export, and the Export button."""

    def __init__(self, folder: str | Path = DEFAULT_FOLDER) -> None:
        self.mode = ComboBox(name="mode", label="Mode", choices=MODE_CHOICES, value=SHAREABLE)
        self.mode.tooltip = (
            "Shareable: no patient name, ID or birth date in the files, a pseudonymous file name. "
            "Clinical: the identifiers of the input are kept."
        )
        self.folder = FileEdit(name="folder", label="Folder", mode="d", value=str(folder))
        self.folder.choose_btn.text = "…"
        self.folder.choose_btn.tooltip = "Choose the export folder"
        self.folder.line_edit.tooltip = "The folder the files are written to (created when missing)"
        self.checks: dict[str, CheckBox] = {}
        for fmt, text, tip, on in FILE_TYPES:
            self.checks[fmt] = CheckBox(name=fmt, text=text, value=on, tooltip=tip)
        self.checks["maps"] = CheckBox(name="maps", text="Maps", value=False, tooltip=MAPS_TIP)
        self.files = Container(
            name="files", label="Files", layout="horizontal", labels=False, widgets=list(self.checks.values())
        )
        self.files.margins = (0, 0, 0, 0)
        self.overwrite = CheckBox(
            name="overwrite",
            text="Replace existing files without asking",
            value=False,
            tooltip="Unticked, the dock asks before it replaces a report with the same name",
        )
        self.export_button = PushButton(name="export", text="Export")
        self.export_button.tooltip = "Write the ticked files of the selected scan into the folder"
        super().__init__(widgets=[self.mode, self.folder, self.files, self.overwrite, self.export_button])
        self.margins = (0, 0, 0, 0)

    def __getattr__(self, name: str):
        checks = self.__dict__.get("checks")
        if checks is not None and name in checks:  # form.json, form.pdf, ... as for a magicgui form
            return checks[name]
        return super().__getattr__(name)

    @property
    def formats(self) -> tuple[str, ...]:
        """The ticked report formats that can be written (SR only when enabled: a DICOM input)."""
        return tuple(fmt for fmt, *_ in FILE_TYPES if self.checks[fmt].value and self.checks[fmt].enabled)

    def settings(self) -> ExportSettings:
        text = self.folder.line_edit.value.strip()  # empty: the default folder, not the working one
        return ExportSettings(
            formats=self.formats,
            maps=bool(self.checks["maps"].value),
            folder=Path(text).expanduser() if text else DEFAULT_FOLDER,
            mode=self.mode.value,
            overwrite=bool(self.overwrite.value),
        )

    def allow_sr(self, allowed: bool) -> None:
        """SR is for DICOM inputs only: its box is greyed out (and not written) for other scans."""
        box = self.checks["sr"]
        box.enabled = allowed
        box.tooltip = FILE_TYPES[2][2] if allowed else SR_NEEDS_DICOM
