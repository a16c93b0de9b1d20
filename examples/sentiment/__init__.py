"""The seed's sentiment classifier on UCI's Sentiment Labelled Sentences.

Modules: :mod:`.data` (finding, checking and splitting the labelled
sentences), :mod:`.train` (training, evaluation and conversion; the model
tokenizes itself, with a TextVectorization first layer), :mod:`.predict`
(the client side: sentences in, scores out over gRPC). Only ``train`` imports
TensorFlow, so the client side stays as light as ``onnxserve.client``.
"""
