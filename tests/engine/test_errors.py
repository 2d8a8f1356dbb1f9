"""Error messages lead with the cause, then the file, then what to do; the parts survive pickling."""

from __future__ import annotations

import pickle

from hyperct.errors import (
    CorruptFileError,
    ExportError,
    HyperCTError,
    OutputExistsError,
    error_text,
    naming,
)


def test_the_cause_leads_then_the_file_then_what_to_do():
    e = CorruptFileError("truncated pixel data", path="/data/ct/IM7", hint="export the series again")
    assert str(e) == "truncated pixel data (/data/ct/IM7) -> export the series again"
    assert (e.cause, e.path, e.hint) == ("truncated pixel data", "/data/ct/IM7", "export the series again")
    # a cause that names the file already does not name it twice
    assert str(HyperCTError("cannot read /data/a.nii", path="/data/a.nii")) == "cannot read /data/a.nii"
    assert error_text("no model") == "no model"
    # a series (where) and its file: both after the cause, the file not repeated when where names it
    e = HyperCTError("gantry tilt of 21.8 degrees", where="series 7 in /d", path="/d/IM1", hint="resample")
    assert str(e) == "gantry tilt of 21.8 degrees (series 7 in /d; /d/IM1) -> resample"
    assert str(HyperCTError("cut short", where="series 7 in /d", path="/d")) == "cut short (series 7 in /d)"


def test_naming_adds_the_input_only_where_the_message_lacks_a_file():
    assert naming("scan.nii", HyperCTError("no valid score", hint="check the model")) == (
        "no valid score (scan.nii) -> check the model"
    )
    assert naming("scan.nii", HyperCTError("bad", path="/x/scan.nii")) == "bad (/x/scan.nii)"
    assert naming("in", ValueError("boom")) == "boom (in)"


def test_errors_keep_their_parts_across_processes():
    e = OutputExistsError(
        "the output file already exists", path="/o/a.pdf", hint="pass --overwrite", where="x"
    )
    e.written = {"json": "/o/a.json"}
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is OutputExistsError and isinstance(back, ExportError)
    assert str(back) == str(e) and back.path == "/o/a.pdf" and back.hint == "pass --overwrite"
    assert back.where == "x"
    assert back.written == {"json": "/o/a.json"}
