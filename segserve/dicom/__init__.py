"""DICOM: reading a series into a volume, DICOM SEG export, de-identification (PS3.15 Annex E) and its table.

    series.py      one series (single-frame or enhanced multi-frame objects) -> Volume
    geometry.py    slice planes, their order, spacing, tilt and gaps -> the volume's affine
    seg.py         a label volume + its source datasets -> a DICOM SEG (highdicom)
    deid.py        the basic de-identification profile applied to one dataset, UID replacement
    deid_table.py  the profile's attribute table (PS3.15 Table E.1-1)
    deid_store.py  de-identifying stored files, the UID key and the replacement -> original UID pairs

Builds on :mod:`segserve.imaging` (the Volume type, errors); :mod:`segserve.scans` reads whole uploads
(and re-reads a job's files for its SEG) on top of this room.
"""
