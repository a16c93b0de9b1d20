"""A small CNN on scikit-learn's bundled 8x8 digit images (real data, offline).

Modules: :mod:`.data` (the images and the fixed held-out split), :mod:`.train`
(training, evaluation and conversion), :mod:`.predict` (classifying held-out
images through the server and measuring the accuracy).
"""
