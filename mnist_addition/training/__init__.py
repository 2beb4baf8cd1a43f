"""Training with Accelerate: one CPU, one GPU, or data-parallel under ``accelerate launch``.

* ``run``: ``train(config)``, the one way into a run (the CLI, a sweep trial and Python call it):
  process group in, run folder chosen, ``fit``, process group out;
* ``loop``: ``fit``, the loop; ``setup``: the Accelerator, model and data on the device;
  ``start``: where training starts (scratch, a checkpoint, another run's); ``step``: one optimizer
  step; ``state``: ``Run`` and ``TrainState``; ``checkpointer``: when and what it saves;
* ``group``: the process group; ``faults``: preemption and lost peers; ``stops``: what a stop leaves;
* ``resume``: what may change when a run resumes; ``trackers`` and ``stores``: ``--log-with``.

May import: ``core``, ``rundir``, Accelerate. Never Ray.
"""
