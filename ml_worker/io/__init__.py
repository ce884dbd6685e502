"""Imaging I/O: DICOM series to volumes with checked geometry, NIfTI/DICOM conversion, DICOM SEG."""
