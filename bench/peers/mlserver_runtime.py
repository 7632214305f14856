"""The MLServer side of `make bench-peers`: an onnxruntime model as an MLServer custom runtime (MLServer 1.7
ships none for ONNX). One intra-op thread, as a Railyard replica with `cpus: 1` uses. Runs in MLServer's venv."""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        self.session = ort.InferenceSession(await get_model_uri(self._settings), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensor = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        results = self.session.run(self.output_names, {self.input_name: tensor})
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(name, value) for name, value in zip(self.output_names, results, strict=True)])
