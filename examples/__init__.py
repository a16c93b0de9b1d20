"""The seed's two tasks, end to end: train with Keras, convert, serve, call.

``examples.sentiment`` is the article's Embedding -> LSTM -> LSTM -> Dense
sentiment classifier on UCI's Sentiment Labelled Sentences; ``examples.digits``
is a small CNN on scikit-learn's bundled 8x8 digit images.
``python -m examples.build_repository`` trains both and writes the model
repository that ``make serve`` serves. The package runs from the repository
root and is not installed with onnxserve.
"""
