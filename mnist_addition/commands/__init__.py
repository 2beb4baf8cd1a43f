"""The command line, ``mnist-addition``: it parses and prints; the rules live in the layers below.

* ``cli``: the commands; ``flags``: the parser, every flag from a field of ``TrainConfig`` or
  ``SweepOptions``; ``tables``: what is printed;
* ``evaluate``, ``predict``, ``export``: a saved run re-scored, used, exported;
* ``catalog``: ``runs`` and ``compare``, the run and sweep folders under a folder.

May import every layer: ``core``, ``rundir``, ``training``, ``sweep`` (the last two only inside a
command, so that ``--help`` and ``runs`` load neither torch nor Ray).
"""
