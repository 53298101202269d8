"""The comparison as one study: networks x datasets x engines, resumable, rendered as the paper's tables.

``study.json`` is the source of truth; every table, CSV, LaTeX file and plot
is rendered from it. Its shape is :class:`segbench.bench.model.Study` (JSON
Schema: ``segbench/schemas/study.schema.json``): the machine, the study file
as read, the ranking rule, and per dataset its classes and networks, each
network with its own evaluation (mmseg's IoUMetric arithmetic) and its bench
report's engine rows (:class:`segbench.bench.model.EngineRow`), ranked across
every (network, engine) pair of the dataset (``study_rank``, ``study_pareto``).
"""
