"""The mlflow side of `make bench-peers`: save an ONNX file as an MLflow model (the onnx flavor, whose pyfunc
`mlflow models serve` serves). Runs in mlflow's venv: `python mlflow_model.py <model.onnx> <output dir>`."""

import sys

import mlflow.onnx
import onnx

mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])
