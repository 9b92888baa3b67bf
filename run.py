#!/usr/bin/env python3
"""Train the hlb-CIFAR10 speed-run recipe: `python run.py --compile` (see README.md)."""
import sys

from engine.command import main

if __name__ == "__main__":
    sys.exit(main())
