"""The digits example's post-processing, as Triton spells it: labels and an ensemble.

Written beside the converted ``digits`` entry::

    digits/labels.txt, and label_filename on its output (the classification
        extension: ask an output for its top classes, "0.981234:3:three")
    digits_label/1/model.py, config.pbtxt, labels.txt   (a Python model:
        probabilities -> label, probability)
    digits_labelled/1/, config.pbtxt   (an ensemble: image -> digits ->
        digits_label -> label, probability)

so that a client that wants a label, not ten probabilities, asks
``digits_labelled``; each step is batched by its own model's scheduler.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format

from onnxserve.protocol import model_config_pb2 as mc

__all__ = ["ENSEMBLE_NAME", "LABELS", "POSTPROCESS_NAME", "write_labelled_entries"]

POSTPROCESS_NAME = "digits_label"
ENSEMBLE_NAME = "digits_labelled"
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LABELS_FILE = "labels.txt"
MAX_BATCH = 64

_POSTPROCESS_CONFIG = f"""name: "{POSTPROCESS_NAME}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [ {{ name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] }} ]
output [
  {{ name: "label" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "probability" data_type: TYPE_FP32 dims: [ 1 ] }}
]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU }} ]
"""

_ENSEMBLE_CONFIG = f"""name: "{ENSEMBLE_NAME}"
platform: "ensemble"
max_batch_size: {MAX_BATCH}
input [ {{ name: "image" data_type: TYPE_FP32 dims: [ 8, 8 ] }} ]
output [
  {{ name: "label" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "probability" data_type: TYPE_FP32 dims: [ 1 ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "digits"
      model_version: -1
      input_map {{ key: "image" value: "image" }}
      output_map {{ key: "probabilities" value: "probabilities" }}
    }},
    {{
      model_name: "{POSTPROCESS_NAME}"
      model_version: -1
      input_map {{ key: "probabilities" value: "probabilities" }}
      output_map {{ key: "label" value: "label" }}
      output_map {{ key: "probability" value: "probability" }}
    }}
  ]
}}
"""


def write_labelled_entries(repository: Path, model_name: str = "digits") -> list[Path]:
    """Labels for the converted model and the two entries above; the folders written."""
    labels = "\n".join(LABELS) + "\n"
    model = repository / model_name
    (model / LABELS_FILE).write_text(labels, encoding="utf-8")
    config_path = model / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(encoding="utf-8"), mc.ModelConfig())
    for output in config.output:
        output.label_filename = LABELS_FILE
    config_path.write_text(text_format.MessageToString(config), encoding="utf-8")

    postprocess = repository / POSTPROCESS_NAME
    (postprocess / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(__file__).with_name("label_model.py"), postprocess / "1" / "model.py")
    (postprocess / LABELS_FILE).write_text(labels, encoding="utf-8")
    (postprocess / "config.pbtxt").write_text(_POSTPROCESS_CONFIG, encoding="utf-8")

    ensemble = repository / ENSEMBLE_NAME
    (ensemble / "1").mkdir(parents=True, exist_ok=True)
    (ensemble / "config.pbtxt").write_text(_ENSEMBLE_CONFIG, encoding="utf-8")
    return [model, postprocess, ensemble]
