"""One run: the data and its loader, the shared network pieces, whitening, the
optimizers, the training loop and evaluation. What a recipe (engine/recipes/) calls."""
