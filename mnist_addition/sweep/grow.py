"""``tune --resume --name NAME --num-samples M``: a sweep that grows to M trials.

Ray declines a changed ``num_samples`` on restore by design (its Tuner keeps the one it was made
with), so the sweep's own state is grown instead: while Tune restores its search algorithm from
the sweep folder (once ``trust`` has proven every file of that state signed by this user), the
restored algorithm is told it has M samples, not N, and that it is not finished. Its searcher
comes back as it was saved and goes on from there:

* ``--search optuna``: Optuna's study, every finished trial's result in it, suggests the new
  trials (what TPE learned is kept, not relearned);
* ``--search random``: the sampler's random state continues, so the sweep samples the trials a
  sweep of M would have sampled after its first N.

Tune then ranks the new trials with the old ones in one ResultGrid (random search's trial ids go
on from the old ones: ``..._00008`` after ``..._00007``). A sweep resumed without Ray's state (``rebuild``)
grows by itself: its new Tuner is made with M. PBT's population is fixed: it cannot grow.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


@contextlib.contextmanager
def growing(total: int) -> Iterator[None]:
    """While Tune restores a sweep inside this block, its search algorithm grows to ``total`` samples."""
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.search_generator import SearchGenerator

    originals = {cls: cls.__dict__["restore_from_dir"] for cls in (BasicVariantGenerator, SearchGenerator)}

    def restore_and_grow(original: Any) -> Any:
        def restore_from_dir(self: Any, dirpath: str) -> None:
            original(self, dirpath)
            grow(self, total)
        return restore_from_dir

    for cls, original in originals.items():
        cls.restore_from_dir = restore_and_grow(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.restore_from_dir = original


def grow(search_alg: Any, total: int) -> int:
    """Give a restored search algorithm (Ray's ``BasicVariantGenerator`` or ``SearchGenerator``)
    ``total`` samples; returns how many were added."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    more = total - search_alg.total_samples
    if more <= 0:
        return 0
    if isinstance(search_alg, BasicVariantGenerator):
        last = search_alg._iterators[-1]  # the sampler of the sweep's one experiment, its random state with it
        last.num_samples += more
        last.num_samples_left += more
        search_alg.set_state(search_alg.get_state())  # chains the iterators again
    search_alg._total_samples = total
    search_alg._finished = False
    return more
