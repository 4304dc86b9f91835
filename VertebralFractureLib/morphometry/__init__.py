"""Morphometry of each vertebral body: ``measure`` (anatomical frame, body isolation, six points, Ha/Hm/Hp, volume),
``density`` (trabecular HU), ``grade`` (Genant grade and morphology against per-level references) and ``qc`` (the
quality gate: no finding leaves unless the segmentation behind it is plausible)."""
