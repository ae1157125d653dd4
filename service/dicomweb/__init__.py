"""DICOMweb intake (STOW-RS): streaming multipart/related, instance checks, series collection."""
