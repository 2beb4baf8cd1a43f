"""Tools to test the package on one Linux host, used by ``tests/`` and ``benchmarks/`` only.

    machines   machines with their own addresses: network namespaces on a private test network,
               links to cut and restore (root and ``ip netns``)

Standard library only; no layer of the package imports this folder (``tests/test_layers.py``).
"""
