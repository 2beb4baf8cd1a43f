"""The core: the task itself, with torch alone (no Accelerate, no Ray, no run folder on disk).

* ``config``: ``TrainConfig``, the one source of truth of a run (each field's flag, range and roles);
  ``hparams``: values that change during a run;
* ``data``: MNIST's IDX files to tensors, the (image, number) pairs, batches on the device;
* ``model``: the ``seed`` and ``fast`` nets; ``metrics``: losses and counts; ``average``: ``--ema``;
* ``evaluation``: counts and predictions on a split; ``backends``: device, precision, determinism;
* ``errors``: ``UserError``, the one base of every failure a user can act on, and the exit codes.

May import: torch, torchvision, the standard library, and nothing else of this package.
"""
