"""Volumes and the volume file formats other than DICOM.

    volume.py   Volume: array (I, J, K) + affine (voxel -> RAS+ mm) + source format and metadata
    errors.py   ImageError and its kinds (each with a stable ``code`` for the API's problem answers)
    detect.py   what a file is, from its first bytes (NIfTI, MGZ, NRRD, DICOM, zip, or a named other)
    nifti.py    NIfTI-1/2 and MGZ reading
    nrrd.py     NRRD reading
    writers.py  label volumes to NIfTI

DICOM is its own room (:mod:`segserve.dicom`); reading a whole upload of any format is :mod:`segserve.scans`.
"""
