"""fVLM training package, split like open_clip (model library) / open_clip_train (trainer).

* :mod:`training.models` -- the model library: 3D ViT (``vit3d``), text tower + tokenizer (``text``),
  anatomy pooling (``pooling``), the FVLM model + ``build_model`` (``model``), losses (``losses``),
  the one DDP helper module (``distributed``: process group + feature gathers) and zero-shot scoring
  (``zero_shot``). Imports nothing from the other sub-packages.
* :mod:`training.trainer` -- the training loop (``loop.train``), one step's parts (``step``),
  checkpoints, LR schedule, the batch contract + collate (``batch``) and the shard loader (``data``,
  ``transforms``). Uses ``models``, ``tracking`` and ``metrics``; never ``evaluation``.
* :mod:`training.tracking` -- all MLflow code: run trackers (``runs``), the logged pyfunc and the
  registry (``registry``, ``pyfunc_model``), the promotion gate (``gate``), decision thresholds as
  version tags (``thresholds``). Uses ``models`` (the logged pyfunc only).
* :mod:`training.metrics` -- binary classification metrics (numpy only).
* :mod:`training.evaluation` -- zero-shot evaluation (``evaluate``). Uses ``models``, ``tracking``,
  ``metrics``; its ``tracking`` module is only an import alias for models logged before the move.
* :mod:`training.inference` -- prediction for a new DICOM / NIfTI study (``predict``). Uses ``models``,
  ``tracking`` and the trainer's shard loader.

No module imports the CLI package ``fvlm`` or ``flows``.
"""
