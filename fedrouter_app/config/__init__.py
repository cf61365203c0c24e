"""The run configuration: its schema, composing it from conf/ with Hydra, flat keys, the reference."""
