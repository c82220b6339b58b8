"""The dynamic user model: update rules, t-batched replay, state on disk, training of θ."""
