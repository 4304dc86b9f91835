"""Cohort tables of a batch: ``cases.parquet`` (one row per case) and ``vertebrae.parquet`` (one row per vertebra).

Built from what every case published (its ``results.json`` record and its screening), so a resumed batch gives the
same tables as one run. Apache Parquet files with a fixed schema: every column exists, with its type, even when no
case fills it; pandas (``pandas.read_parquet``) and Dask (``dask.dataframe.read_parquet``) read them as they are.
The schema's version is stored in each file's metadata under :data:`SCHEMA_KEY`; columns are documented in
``docs/cohort.md``. A new column raises the minor version, a renamed or removed one the major version.
"""

from __future__ import annotations

from pathlib import Path

TABLE_SCHEMA_VERSION = "1.0"
SCHEMA_KEY = b"vertebral_fracture.schema_version"
TABLE_KEY = b"vertebral_fracture.table"
HEIGHTS = ("anterior", "middle", "posterior")
RATIOS = ("wedge", "biconcavity", "middle_to_anterior", "middle_to_walls", "crush", "expected_wedge",
          "area_deficit")

# (column, Arrow type name): the one place the tables' columns are declared, in order.
CASE_COLUMNS = (
    ("case", "string"), ("status", "string"), ("reason", "string"), ("input", "string"), ("series", "string"),
    ("output", "string"), ("segmentation", "string"), ("backend", "string"), ("levels_status", "string"),
    ("levels", "string"), ("vertebrae", "int16"), ("graded_vertebrae", "int16"), ("fractured_vertebrae", "int16"),
    ("fractured_levels", "string"), ("worst_grade", "int8"), ("l1_trabecular_hu", "float64"),
    ("screening_level", "string"), ("screening_hu", "float64"), ("screening_hu_corrected", "float64"),
    ("density_category", "string"), ("contrast_status", "string"), ("contrast_phase", "string"), ("kvp", "float64"),
    ("recommendation_action", "string"), ("recommendation", "string"), ("recommendation_reasons", "string"),
    ("recommendation_confidence", "string"), ("qc_status", "string"), ("qc_failed_checks", "string"),
    ("warnings", "string"), ("include_upper_thoracic", "bool"), ("seconds", "float64"), ("cpu_seconds", "float64"),
    ("worker", "string"), ("worker_peak_memory_mb", "float64"), ("results_schema_version", "string"),
)
VERTEBRA_COLUMNS = (
    ("case", "string"), ("case_status", "string"), ("label", "int16"), ("level", "string"), ("complete", "bool"),
    ("incomplete_reason", "string"),
    *((f"height_{name}_mm", "float64") for name in HEIGHTS),
    *((f"expected_height_{name}_mm", "float64") for name in HEIGHTS),
    *((f"ratio_{name}", "float64") for name in RATIOS),
    ("height_loss", "float64"), ("genant_grade", "int8"), ("morphology", "string"), ("grade_reason", "string"),
    ("fracture_score", "float64"), ("not_assessed_reason", "string"), ("withheld_for_voxel_size", "float64"),
    ("trabecular_hu", "float64"), ("trabecular_hu_iqr", "float64"), ("trabecular_voxels", "int32"),
    ("body_volume_ml", "float64"), ("depth_mm", "float64"), ("voxel_extent_mm", "float64"),
    ("qc_passed", "bool"), ("qc_problems", "string"), ("qc_withheld_grade", "int8"),
    ("grade_override", "int8"), ("final_grade", "int8"), ("reviewed", "bool"),
    ("backend", "string"), ("levels_status", "string"), ("case_qc_status", "string"),
)


def _text(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) or None
    return str(value)


def _number(value):
    return None if value is None or value == "" else float(value)


def case_row(summary: dict, result: dict | None, screening: dict | None) -> dict:
    """The cases-table row of one case: its summary.csv row, its results.json record and its screening summary."""
    result = result or {}
    patient = result.get("patient") or {}
    quality = result.get("quality") or {}
    vertebrae = result.get("vertebrae") or []
    screening = screening or {}
    recommendation = screening.get("recommendation") or {}
    contrast = screening.get("contrast") or {}
    graded = [v for v in vertebrae if v.get("genant_grade") is not None]
    worst = patient.get("worst_grade")
    return {
        "case": summary.get("case"), "status": summary.get("status"), "reason": _text(summary.get("reason")),
        "input": _text(summary.get("input")), "series": _text(summary.get("series")),
        "output": _text(summary.get("output")), "segmentation": _text(summary.get("segmentation")),
        "backend": _text(result.get("segmentation_backend")), "levels_status": _text(result.get("levels_status")),
        "levels": _text(" ".join(v["level"] for v in vertebrae)), "vertebrae": len(vertebrae) if result else None,
        "graded_vertebrae": len(graded) if result else None,
        "fractured_vertebrae": sum(1 for v in graded if v["genant_grade"] > 0) if result else None,
        "fractured_levels": _text(" ".join(patient.get("fractured_levels") or [])),
        "worst_grade": None if worst is None else int(worst),
        "l1_trabecular_hu": _number(patient.get("l1_trabecular_hu")),
        "screening_level": _text(screening.get("level")), "screening_hu": _number(screening.get("measured_hu")),
        "screening_hu_corrected": _number(screening.get("corrected_hu")),
        "density_category": _text(screening.get("category")), "contrast_status": _text(contrast.get("status")),
        "contrast_phase": _text(contrast.get("phase")), "kvp": _number(screening.get("kvp")),
        "recommendation_action": _text(recommendation.get("action")),
        "recommendation": _text(recommendation.get("statement")),
        "recommendation_reasons": _text(recommendation.get("reasons")),
        "recommendation_confidence": _text(recommendation.get("confidence")),
        "qc_status": _text(quality.get("status")), "qc_failed_checks": _text(quality.get("failed_checks")),
        "warnings": _text(result.get("warnings")),
        "include_upper_thoracic": bool((result.get("inputs") or {}).get("include_upper_thoracic")) if result else None,
        "seconds": _number(summary.get("seconds")), "cpu_seconds": _number(summary.get("cpu_seconds")),
        "worker": _text(summary.get("worker")),
        "worker_peak_memory_mb": _number(summary.get("worker_peak_memory_mb")),
        "results_schema_version": _text(result.get("schema_version")),
    }


def vertebra_rows(summary: dict, result: dict | None) -> list[dict]:
    """The vertebrae-table rows of one case (none for a failed case)."""
    if not result:
        return []
    quality = result.get("quality") or {}
    per_level = {q.get("label"): q for q in quality.get("vertebrae") or []}
    rows = []
    for vertebra in result.get("vertebrae") or []:
        heights = vertebra.get("heights_mm") or {}
        expected = vertebra.get("expected_heights_mm") or {}
        ratios = vertebra.get("ratios") or {}
        checked = per_level.get(vertebra.get("label"))
        override = vertebra.get("grade_override")
        grade = vertebra.get("genant_grade")
        row = {
            "case": summary.get("case"), "case_status": summary.get("status"), "label": vertebra.get("label"),
            "level": vertebra.get("level"), "complete": bool(vertebra.get("complete", True)),
            "incomplete_reason": _text(vertebra.get("incomplete_reason")),
            "height_loss": _number(vertebra.get("height_loss")), "genant_grade": grade,
            "morphology": _text(vertebra.get("morphology")), "grade_reason": _text(vertebra.get("grade_reason")),
            "fracture_score": _number(vertebra.get("fracture_score")),
            "not_assessed_reason": _text(vertebra.get("not_assessed_reason")),
            "withheld_for_voxel_size": _number(vertebra.get("withheld_for_voxel_size")),
            "trabecular_hu": _number(vertebra.get("trabecular_hu")),
            "trabecular_hu_iqr": _number(vertebra.get("trabecular_hu_iqr")),
            "trabecular_voxels": int(vertebra.get("trabecular_voxels") or 0),
            "body_volume_ml": _number(vertebra.get("body_volume_ml")), "depth_mm": _number(vertebra.get("depth_mm")),
            "voxel_extent_mm": _number(vertebra.get("voxel_extent_mm")),
            "qc_passed": None if checked is None else not checked.get("problems"),
            "qc_problems": None if checked is None else _text(checked.get("problems")),
            "qc_withheld_grade": None if checked is None else checked.get("withheld_grade"),
            "grade_override": override, "final_grade": override if override is not None else grade,
            "reviewed": bool(vertebra.get("reviewed", False)),
            "backend": _text(result.get("segmentation_backend")), "levels_status": _text(result.get("levels_status")),
            "case_qc_status": _text(quality.get("status")),
        }
        for name in HEIGHTS:
            row[f"height_{name}_mm"] = _number(heights.get(name))
            row[f"expected_height_{name}_mm"] = _number(expected.get(name))
        for name in RATIOS:
            row[f"ratio_{name}"] = _number(ratios.get(name))
        rows.append(row)
    return rows


def arrow_schema(columns, table: str):
    import pyarrow as pa

    types = {"string": pa.string(), "bool": pa.bool_(), "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(),
             "int64": pa.int64(), "float64": pa.float64()}
    fields = [pa.field(name, types[kind]) for name, kind in columns]
    return pa.schema(fields, metadata={SCHEMA_KEY: TABLE_SCHEMA_VERSION.encode(), TABLE_KEY: table.encode()})


class CohortTables:
    """The two tables of a batch, filled case by case in any order and written in the batch's case order.

    Rows are kept as Arrow columns, converted every :data:`CHUNK_CASES` cases, so a batch of 100,000 cases (about
    two million vertebrae) holds a few hundred MB, not Python objects for every value.
    """

    CHUNK_CASES = 500

    def __init__(self):
        self._case_rows: list[dict] = []
        self._vertebra_rows: list[dict] = []
        self._case_chunks: list = []
        self._vertebra_chunks: list = []

    def add(self, order: int, summary: dict, result: dict | None, screening: dict | None) -> None:
        self._case_rows.append({**case_row(summary, result, screening), ORDER_COLUMN: order, POSITION_COLUMN: 0})
        self._vertebra_rows.extend({**row, ORDER_COLUMN: order, POSITION_COLUMN: position}
                                   for position, row in enumerate(vertebra_rows(summary, result)))
        if len(self._case_rows) >= self.CHUNK_CASES:
            self._flush()

    def _flush(self) -> None:
        if self._case_rows:
            self._case_chunks.append(_arrow(self._case_rows, CASE_COLUMNS + ORDERING, "cases"))
            self._case_rows = []
        if self._vertebra_rows:
            self._vertebra_chunks.append(_arrow(self._vertebra_rows, VERTEBRA_COLUMNS + ORDERING, "vertebrae"))
            self._vertebra_rows = []

    def tables(self) -> tuple:
        """(cases, vertebrae) as Arrow tables in case order, without the ordering column."""
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401  (pa.compute)

        self._flush()
        result = []
        for chunks, columns, name in ((self._case_chunks, CASE_COLUMNS, "cases"),
                                      (self._vertebra_chunks, VERTEBRA_COLUMNS, "vertebrae")):
            if chunks:
                table = pa.concat_tables(chunks)
                # Case order, then the vertebrae of a case head to foot.
                table = table.take(pa.compute.sort_indices(table, [(ORDER_COLUMN, "ascending"),
                                                                   (POSITION_COLUMN, "ascending")]))
                table = table.drop_columns([ORDER_COLUMN, POSITION_COLUMN]).replace_schema_metadata(
                    arrow_schema(columns, name).metadata)
            else:
                table = arrow_schema(columns, name).empty_table()
            result.append(table)
        return tuple(result)

    def write(self, out_dir: Path) -> dict[str, Path]:
        """``cases.parquet`` and ``vertebrae.parquet`` in ``out_dir``, each written atomically."""
        import pyarrow.parquet as pq

        from VertebralFractureLib.io import atomic_path

        written = {}
        for name, table in zip(("cases", "vertebrae"), self.tables()):
            path = out_dir / f"{name}.parquet"
            with atomic_path(path) as temporary:
                pq.write_table(table, temporary, compression="zstd")
            written[name] = path
        return written


def written_here(path: Path) -> bool:
    """Whether ``path`` is a cohort table this program wrote (its schema carries :data:`SCHEMA_KEY`)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not Parquet at all (pyarrow raises several types)
        return False
    return SCHEMA_KEY in metadata


ORDER_COLUMN, POSITION_COLUMN = "__order", "__position"
ORDERING = ((ORDER_COLUMN, "int64"), (POSITION_COLUMN, "int64"))
"""Columns that put the rows in the batch's order while the tables fill; not written."""


def _arrow(rows: list[dict], columns, table: str):
    import pyarrow as pa

    schema = arrow_schema(columns, table)
    return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name, _ in columns}, schema=schema)


def screening_summary(screening_dict: dict | None) -> dict | None:
    """The part of ``screening.json``'s ``screening`` object the cases table keeps (small enough to travel back
    from a worker)."""
    if not screening_dict:
        return None
    keep = ("level", "measured_hu", "corrected_hu", "category", "kvp", "recommendation", "contrast")
    summary = {key: screening_dict.get(key) for key in keep}
    if isinstance(summary.get("contrast"), dict):
        summary["contrast"] = {k: summary["contrast"].get(k) for k in ("status", "phase")}
    return summary
