"""A job's scan files, whatever their format: read an upload (one file, a DICOM series, a zip) into a Volume,
read input channels and reference labels, check grids; and the job's DICOM SEG made from its stored files.

    readers.py     read_image, read_channels, read_labels, check_same_grid
    archive.py     one series or one volume inside a zip, with size and entry caps
    seg_export.py  export_job_seg / try_export_job_seg / seg_result_path

Sits on :mod:`segserve.imaging` (volume formats) and :mod:`segserve.dicom` (DICOM series, SEG building).
"""
