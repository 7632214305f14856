"""The task_scheduler service: owns orchestrations, tasks, task runs and their logs."""
