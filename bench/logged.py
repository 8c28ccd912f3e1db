"""Run another bench script with the engines' logs on stderr (graph compiles, refusals, waits).

python bench/logged.py bench/backend_check.py --restart ...
"""

from __future__ import annotations

import logging
import runpy
import sys

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
logging.getLogger("generator.engines").setLevel(logging.INFO)
logging.getLogger("generator.engines.precompiled").setLevel(logging.DEBUG)
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
