"""Tools to test the package on one Linux host, used by ``tests/`` and ``benchmarks/`` only.

    machines   machines with their own addresses: network namespaces on a private test network,
               links to cut and restore (root and ``ip netns``)
    slowed     training slowed in the processes a test starts, so that there is a mid-run to interrupt

Standard library only; no layer of the package imports this folder (``tests/test_layers.py``).
"""
