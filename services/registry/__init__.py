"""The registry service: owns models, model versions, external model registries and data connections."""
