"""Benchmarks: each prints figures (a JSON report and a PNG if asked); the worker runs none.

- :mod:`streams.bench.quality`: ``recstream bench quality``, every model on one labelled stream;
- :mod:`streams.bench.throughput`: ``recstream bench throughput``, the worker's pipeline in-process;
- :mod:`streams.bench.kafka`: ``recstream bench throughput --kafka``, the worker end to end,
  beside a Faust pass-through (:mod:`streams.bench.faust_hooks`) and a bare client reader;
- :mod:`streams.bench.faults`: ``recstream bench faults``, the real worker under faults
  (:mod:`streams.bench.fault_kit` runs them, :mod:`streams.bench.fault_audit` checks every
  offset, :mod:`streams.bench.event_time` the far-future and lagging-partition check);
- :mod:`streams.bench.memory`: ``python -m streams.bench.memory``, tables at their caps;
- :mod:`streams.bench.learner`: the learner alone, samples per second.
"""
