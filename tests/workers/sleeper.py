"""Worker for tests/robustness/test_launch.py: record this process's pid in ARGV[1], then sleep."""

import os
import sys
import time
from pathlib import Path

Path(sys.argv[1], f"{os.getpid()}.pid").write_text(str(os.getppid()))
time.sleep(600)
