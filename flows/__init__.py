"""flows package."""

from core.processes import scale_ephemeral_startup_timeout

# before any flows module imports Prefect (which reads its settings once): a flow run without a server
# (e.g. ``ingest_flow()`` from Python) gives Prefect's ephemeral server as long as the machine's load asks for
scale_ephemeral_startup_timeout()
