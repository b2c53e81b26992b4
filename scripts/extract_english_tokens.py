#!/usr/bin/env python
"""Extract Qwen3-4B's English vocabulary into a directory (tokenizer only, no weights).

The same function as ``qwen-backends vocab english``
(:func:`qwen_backends.vocab.output.export_english_vocab`), for people who prefer a script::

    python scripts/extract_english_tokens.py --tokenizer offline --output runs/english-vocab
"""

from __future__ import annotations

import sys

from qwen_backends.cli import main

if __name__ == "__main__":
    sys.exit(main(["vocab", "english", *sys.argv[1:]]))
