"""Zero-shot evaluation (``evaluate``, ``metrics``) and the MLflow tracking / registry code (``tracking``)."""
