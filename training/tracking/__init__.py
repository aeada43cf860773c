"""All MLflow code of the project, one idea per module (MLflow imported inside functions only):

* :mod:`training.tracking.runs` -- run trackers (``MlflowTracker`` on rank 0, ``NullTracker`` elsewhere),
  ``make_tracker``, provenance tags, ``tracking_uri_for``;
* :mod:`training.tracking.registry` -- the logged pyfunc (``log_model``, ``pyfunc_input``), registration,
  model URIs -> a local model directory or a registered version;
* :mod:`training.tracking.gate` -- the promotion gate (floor, champion comparison, decision tags);
* :mod:`training.tracking.thresholds` -- per-label decision thresholds as model version tags;
* :mod:`training.tracking.pyfunc_model` -- the MLflow model logged from code (never imported by the package).

Uses ``core`` only; ``trainer``, ``evaluation`` and ``inference`` use it.
"""
