"""The monitoring service: owns deployment stats, feedback, training-data references and continuous training policy."""
