"""The deployer service: owns pipelines, pipeline versions, deployments and engine configs."""
