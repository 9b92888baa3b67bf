"""cifar-speedrun's engine: the recipes as a library (README "Library").

    import engine
    result = engine.fit(engine.Config(epochs=10), data="data", seed=0)
    engine.evaluate(result.ema_model, engine.load_cifar10("data"))
    engine.fit(engine.make_config("airbench94-muon"), data="data", seed=0)   # the record recipe

The names below load their module on first use, so `import engine` stays cheap
(no torch, no Triton) and does nothing else.
"""

_EXPORTS = {
    "fit": "engine.api",                  # train one run: returns a RunResult with the networks
    "evaluate": "engine.api",             # flip-TTA test accuracy of a network
    "make_deterministic": "engine.api",   # torch's deterministic flags (CUDA)
    "Config": "engine.recipes.seed",      # the seed recipe's hyperparameters (the default recipe)
    "make_config": "engine.recipes",      # any recipe's Config by name: seed, seed-long, airbench94-muon
    "CifarLoader": "engine.training.data",         # the on-device augmenting loader on its own
    "Cifar10": "engine.training.data",
    "load_cifar10": "engine.training.data",
    "convert": "engine.training.data",             # any data source to one .npz file
    "make_synthetic": "engine.training.data",
    "Trainer": "engine.training.train",            # many runs sharing one compilation
    "RunResult": "engine.training.train",
    "TrainingDiverged": "engine.training.train",
    "save_checkpoint": "engine.results.checkpoint",
    "load_checkpoint": "engine.results.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
