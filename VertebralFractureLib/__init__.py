"""VertebralFractureLib: vertebra morphometry, Genant fracture grading and bone density on CT.

Pure Python (numpy, scipy, SimpleITK, nibabel, pydicom); no Slicer, Qt or VTK. The pipeline modules:
``io`` -> ``labels`` -> ``segment`` -> ``measure`` -> ``grade`` -> ``screen`` -> ``report``; ``cli`` runs it,
``mrml`` adapts it to Slicer scenes.
"""

__version__ = "0.1.0"
