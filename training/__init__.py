"""fVLM training package, split like open_clip (model library) / open_clip_train (trainer).

* :mod:`training.models` -- the model library: 3D ViT (``vit3d``), text tower + tokenizer (``text``),
  anatomy pooling (``pooling``), the FVLM model + ``build_model`` (``model``), losses (``losses``),
  the one DDP helper module (``distributed``: process group + feature gathers) and zero-shot scoring
  (``zero_shot``). Imports nothing from the other three sub-packages.
* :mod:`training.trainer` -- the training loop (``loop.train``), one step's parts (``step``),
  checkpoints, LR schedule, the batch contract + collate (``batch``) and the shard loader (``data``,
  ``transforms``). Uses ``models`` (and ``evaluation.tracking`` for MLflow).
* :mod:`training.evaluation` -- zero-shot evaluation (``evaluate``, ``metrics``) and all MLflow code
  (``tracking``: trackers, model logging, registry, promotion gate; ``pyfunc_model``: the MLflow model
  logged from code). Uses ``models``.
* :mod:`training.inference` -- prediction for a new DICOM / NIfTI study (``predict``). Uses ``models``
  and ``evaluation``.

No module imports the CLI package ``fvlm`` or ``flows``.
"""
