"""Zero-shot evaluation (``evaluate``); ``tracking`` is only the import alias that MLflow models logged
before the move to :mod:`training.tracking` load."""
