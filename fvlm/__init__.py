"""fvlm-pipeline: anatomy-level CT vision-language pre-training, from DICOM to a registered model."""

__version__ = "0.1.0"
