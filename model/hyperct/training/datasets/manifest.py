"""``{type: manifest, csv: FILE}``: a CSV of volume paths with one label column per finding."""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np

from hyperct.errors import DatasetError
from hyperct.findings import catalogue
from hyperct.training.cache import PreprocessCache
from hyperct.training.datasets.base import (
    MISSING,
    N_FINDINGS,
    VolumeDataset,
    parse_label,
    read_csv,
    read_hu_file,
)


def _finding_aliases() -> dict[str, int]:
    aliases: dict[str, int] = {}
    for f in catalogue():
        for name in (f.id, f.name, f.short_name, f.ct_rate_column):
            if name:
                aliases[name.strip().lower()] = f.index
    return aliases


class ManifestDataset(VolumeDataset):
    """A CSV of volume paths and per-finding labels."""

    kind = "manifest"
    PATH_COLUMNS = ("path", "volume", "file")
    OPTIONAL = ("id", "series_uid", "rescale_slope", "rescale_intercept")

    def __init__(
        self,
        csv_path: str | Path,
        *,
        cache: PreprocessCache | None = None,
        ignore_columns: list[str] | tuple[str, ...] = (),
        unknown_columns: str = "error",
    ):
        csv_path = Path(csv_path)
        super().__init__(source=str(csv_path), cache=cache)
        header, rows = read_csv(csv_path)
        lower = [h.lower() for h in header]
        path_col = next((lower.index(c) for c in self.PATH_COLUMNS if c in lower), None)
        if path_col is None:
            raise DatasetError(
                f"no volume path column (expected one named {' or '.join(self.PATH_COLUMNS)}); columns: {', '.join(header)}",
                path=csv_path,
            )
        aliases = _finding_aliases()
        ignore = {c.strip().lower() for c in ignore_columns}
        finding_cols: dict[int, int] = {}
        optional: dict[str, int] = {}
        for j, name in enumerate(lower):
            if j == path_col or name in ignore:
                continue
            if name in self.OPTIONAL:
                optional[name] = j
                continue
            if name in aliases:
                k = aliases[name]
                if k in finding_cols.values():
                    raise DatasetError(
                        f"two columns give labels for the finding {catalogue()[k].id!r} ({header[j]!r})",
                        path=csv_path,
                    )
                finding_cols[j] = k
                continue
            if unknown_columns == "ignore":
                continue
            near = difflib.get_close_matches(name, list(aliases), n=1, cutoff=0.6)
            raise DatasetError(
                f"unknown finding column {header[j]!r}"
                + (f" (did you mean {catalogue()[aliases[near[0]]].id!r}?)" if near else ""),
                path=csv_path,
                hint="use finding ids from `hyperct info` / assets/findings.yaml, or list the column in ignore_columns",
            )
        if not finding_cols:
            raise DatasetError(
                "the CSV has no finding columns",
                path=csv_path,
                hint=f"add one column per finding id, e.g. {', '.join(catalogue().ids[:3])}",
            )
        if ("rescale_slope" in optional) != ("rescale_intercept" in optional):
            raise DatasetError("rescale_slope and rescale_intercept must be given together", path=csv_path)
        labels = np.full((len(rows), N_FINDINGS), MISSING, dtype=np.int8)
        self.paths: list[Path] = []
        self.rescale: list[tuple[float, float] | None] = []
        self.series_uid: list[str | None] = []
        missing: list[str] = []
        for r, row in enumerate(rows):
            line = r + 2
            row = row + [""] * (len(header) - len(row))
            raw_path = row[path_col].strip()
            if not raw_path:
                raise DatasetError(f"line {line}: the volume path is empty", path=csv_path)
            p = Path(raw_path).expanduser()
            if not p.is_absolute():
                p = csv_path.parent / p
            if not p.exists():
                missing.append(f"line {line}: {raw_path}")
            self.paths.append(p)
            for j, k in finding_cols.items():
                v = parse_label(row[j])
                if v is None:
                    raise DatasetError(
                        f"line {line}, column {header[j]!r}: label {row[j]!r} is not 1, 0, -1 or empty",
                        path=csv_path,
                    )
                labels[r, k] = v
            if "rescale_slope" in optional:
                try:
                    slope = float(row[optional["rescale_slope"]])
                    intercept = float(row[optional["rescale_intercept"]])
                except ValueError as exc:
                    raise DatasetError(
                        f"line {line}: rescale_slope/intercept are not numbers", path=csv_path
                    ) from exc
                self.rescale.append((slope, intercept))
            else:
                self.rescale.append(None)
            uid = row[optional["series_uid"]].strip() if "series_uid" in optional else ""
            self.series_uid.append(uid or None)
            name = row[optional["id"]].strip() if "id" in optional else ""
            self.names.append(name or raw_path)
        if missing:
            raise DatasetError(
                f"{len(missing)} volume path(s) do not exist, e.g. {'; '.join(missing[:3])}",
                path=csv_path,
                hint="relative paths resolve against the CSV's folder",
            )
        self.labels = labels
        self.check_has_labels()

    def identity(self, i: int) -> dict:
        from hyperct.training.cache import file_identity

        ident = file_identity(self.paths[i])
        if self.rescale[i] is not None:
            ident["rescale"] = list(self.rescale[i])
        if self.series_uid[i]:
            ident["series_uid"] = self.series_uid[i]
        return ident

    def read_hu(self, i: int) -> np.ndarray:
        return read_hu_file(
            self.paths[i], rescale=self.rescale[i], series_uid=self.series_uid[i], source=str(self.paths[i])
        )
