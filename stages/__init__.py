"""The stages of the lifecycle. Each module exposes `run(recipe, inputs, ctx) -> dict[str, float]`."""
