"""The Slicer side of the Lib: ``mrml`` (MRML nodes <-> the Lib's volumes and results; the only module importing
``slicer``), ``review`` (the review rules on a case result, Slicer-free), ``process`` (the child-process runner with
progress and cancel) and ``dependencies`` (the Python packages the module installs)."""
