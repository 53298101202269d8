"""``segbench serve``: the chosen engine as an HTTP service (map tiles of labels, scene jobs).

Only :mod:`segbench.cli` imports this package. It sits above ``tiler``, ``geo``, the workflow
and the dynamic batcher: tiles run the engine on demand through
:class:`segbench.batcher.DynamicBatcher` and blend as the tiler does
(:mod:`.tiles`); scene jobs call :func:`segbench.workflow.segment_scenes` (:mod:`.jobs`), so
the command line and the service cannot drift apart. :func:`.app.serve` runs it on uvicorn.
"""
