"""An export that finds its file taken after the check (``OutputExistsError``, caught by type) asks
the user and, on Yes, runs the same export again with overwrite (GUI, under Xvfb)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_a_file_appearing_during_the_export_is_asked_about_then_replaced(
    analysed_widget, qtbot, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QMessageBox

    from hyperct_viewer.widgets import findings as findings_mod

    _, widget = analysed_widget
    widget.out_edit.setText(str(tmp_path))
    (target,) = widget.export_targets(("json",), tmp_path)

    real_job, calls = findings_mod._export_job, []

    def racing_job(req, formats, out_dir, overwrite, kwargs):
        calls.append(overwrite)
        if len(calls) == 1:
            target.write_text("someone else's")  # appears after the widget's check
        return real_job(req, formats, out_dir, overwrite, kwargs)

    asked = []

    def question(parent, title, text, *args):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(findings_mod, "_export_job", racing_job)
    monkeypatch.setattr(QMessageBox, "question", question)
    assert widget.export_clicked(("json",)) is not None  # nothing exists yet: no question
    qtbot.waitUntil(lambda: len(calls) == 2 and not widget.jobs.busy, timeout=60000)
    qtbot.wait(20)
    assert calls == [False, True]  # refused, asked, then the same export with overwrite
    assert len(asked) == 1 and target.name in asked[0]
    assert target.read_text().startswith("{") and widget.status.text().startswith("Exported")
