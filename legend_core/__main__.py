import sys

from legend_core.cli import main

sys.exit(main())
