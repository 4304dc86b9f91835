"""Screening: from the measured vertebrae to a patient-level statement. ``rules`` holds every threshold, ``contrast``
finds the contrast phase and corrects density for it, ``recommend`` picks the screening level and writes the
recommendation (:func:`~.recommend.screen_case`)."""
