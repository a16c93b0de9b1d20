"""A tokenizer step: TEXT (one sentence) -> TOKENS (8 word ids from vocab.txt, 0-padded)."""

import os

import numpy as np
import triton_python_backend_utils as pb_utils

LENGTH = 8


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], "vocab.txt")
        with open(path, encoding="utf-8") as handle:
            words = handle.read().split()
        self.ids = {word: index for index, word in enumerate(words, 1)}

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            tokens = np.zeros((texts.shape[0], LENGTH), dtype=np.int64)
            for row, text in enumerate(texts.reshape(-1)):
                words = text.decode("utf-8").lower().replace(".", " ").split()[:LENGTH]
                tokens[row, : len(words)] = [self.ids.get(word, 0) for word in words]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("TOKENS", tokens)]))
        return responses
