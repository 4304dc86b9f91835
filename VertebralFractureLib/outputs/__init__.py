"""What a run leaves behind: ``files`` (results.json, vertebrae.csv, overview.png), ``clinical`` (report.html and
report.pdf), ``dicom`` (DICOM SEG + SR), ``deid`` (DICOM PS3.15 de-identification of exports) and ``publish`` (an
output folder written as one set: staging folder, swap, lock)."""
