"""The federation: the round loop, what messages carry, aggregation, privacy, checkpoints, outputs."""
