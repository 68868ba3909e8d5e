"""The execute side: how handler calls run. The poll thread drives it through the Executor
protocol of runtime/handoff.py, the only module the two sides share.

- core.py: ExecutorCore: a handler's lanes (lanes.py), its failure path (attempts.py, and
  batches.py for batch handlers), the cadence of a chunk, as generators of steps (steps.py);
- threads.py: WorkerPool, the core driven by worker threads, for plain `def` handlers;
- coroutines.py: AsyncPool, the core driven on the process's event loop (event_loop.py), for
  `async def` handlers;
- outputs.py: outputs and failure records written, and their acknowledgements awaited.
"""
