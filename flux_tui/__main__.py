import sys

from flux_tui.main import main

sys.exit(main())
