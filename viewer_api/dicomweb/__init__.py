"""DICOMweb (PS3.18) under /dicom-web: QIDO-RS, WADO-RS, rendered, STOW-RS; and WADO-URI."""
