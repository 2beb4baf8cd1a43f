"""A sweep that grows (sweep/grow.py) at the level of Ray's search algorithm: grown random search
samples what a larger sweep would have. A grown sweep end to end: tests/test_sweep.py.

Ray is imported inside the test, never at collection: tests/test_sweep.py sets
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray reads it at its import (its clusters stay on
127.0.0.1); an earlier import would put them on this machine's address."""

from __future__ import annotations


def trainable(config):
    pass


def sampler(num_samples: int):
    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search.basic_variant import BasicVariantGenerator

    generator = BasicVariantGenerator(random_state=7)
    generator.add_configurations([Experiment("e", trainable, num_samples=num_samples,
                                             config={"lr": tune.loguniform(1e-3, 1e-1)})])
    return generator


def drawn(generator) -> list[tuple[str, float]]:
    out = []
    while (trial := generator.next_trial()) is not None:
        out.append((trial.trial_id.split("_")[-1], trial.config["lr"]))
    return out


def test_grown_random_search_samples_what_a_larger_sweep_would_have():
    import ray.cloudpickle
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from mnist_addition.sweep.grow import grow

    larger = drawn(sampler(3))
    small = sampler(2)
    assert drawn(small) == larger[:2] and small.is_finished()
    restored = BasicVariantGenerator(random_state=0)  # as Tune restores it: the saved state wins
    restored.set_state(ray.cloudpickle.loads(ray.cloudpickle.dumps(small.get_state())))
    assert grow(restored, 3) == 1 and not restored.is_finished()
    assert drawn(restored) == larger[2:]  # the third sample, as trial 00002
    assert grow(restored, 3) == 0  # asked for no more than it has: unchanged
