"""A screening node beside a DICOM server (Orthanc): new CT studies in, DICOM SEG + SR + PDF report out, and a
referral worklist (SQLite embedded, PostgreSQL by URL).

- :mod:`.orthanc`: the server's REST API (change feed, download, upload, delete);
- :mod:`.selection`: which series of a study is analysed, and why the others are skipped;
- :mod:`.worklist`: the database (worklist rows, queued studies, feed position);
- :mod:`.analysis`: the pipeline on one downloaded series and the DICOM outputs;
- :mod:`.node`: the loop that ties them together, exactly once per study across restarts;
- :mod:`.config`: settings from a file and the environment (credentials never on the command line).
"""
