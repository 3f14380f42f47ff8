"""Many task modules on one backbone at once: the task bank (mixed-task batches) and the HTTP server.

`TaskBank` (bank.py) loads task modules of any method onto one frozen backbone and serves batches whose
rows belong to different tasks. `server.py` puts it behind FastAPI with dynamic micro-batching
(batcher.py) and Prometheus metrics; the CLI's `unipetl serve` and `unipetl predict --modules` use both.
"""

from .bank import TaskBank

__all__ = ["TaskBank"]
