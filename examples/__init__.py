"""The seed's two tasks, end to end: train with Keras, convert, serve, call.

``onnxserve.examples.sentiment`` is the article's Embedding -> LSTM -> LSTM ->
Dense sentiment classifier on UCI's Sentiment Labelled Sentences;
``onnxserve.examples.digits`` is a small CNN on scikit-learn's bundled 8x8
digit images. ``python -m onnxserve.examples.build_repository`` trains both and
writes the model repository that ``make serve`` serves
(:func:`example_repository`). The package is installed with onnxserve, under
its name so that no other ``examples`` package (tf2onnx installs one) can
shadow it; training needs the ``examples`` extra (the converter and
scikit-learn), the client side only onnxserve's client, numpy and, for the
digits, scikit-learn. Importing it imports none of them.
"""

from onnxserve.examples.common import example_repository

__all__ = ["example_repository"]
