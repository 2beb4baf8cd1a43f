"""The run folder on disk: what ``mnist-addition train`` writes and every other command reads.

* ``names``: every file name of a run folder and of a sweep folder, in one place;
* ``files``: writes that are atomic and never follow a planted link, reads with a size limit, the lock;
* ``folder``: who may write a run folder, and when (one writer, a new run only where there is none);
* ``checkpoint``: the checkpoint format (safetensors and JSON behind a SHA-256 manifest, no pickle);
* ``contents``: config.json, metrics and weights, written and read back checked (``load_run``);
* ``plots`` and ``pictures``: the pictures a run folder holds (curves, confusion matrices, mistakes).

May import: ``core``. Never Accelerate or Ray.
"""
