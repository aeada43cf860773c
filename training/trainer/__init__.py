"""The trainer: training loop (``loop``), step parts (``step``), checkpoints, schedule, the batch
contract (``batch``) and the Parquet shard loader (``data``, ``transforms``)."""
