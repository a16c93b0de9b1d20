"""``python -m onnxserve`` runs the command line."""

import sys

from onnxserve.cli import main

sys.exit(main())
