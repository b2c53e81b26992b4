"""``python -m qwen_backends.cli``."""

import sys

from qwen_backends.cli import main

sys.exit(main())
