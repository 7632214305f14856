"""The engine service: owns nothing persistent: it loads pipeline steps and runs inference."""
