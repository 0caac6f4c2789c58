"""`python -m ctl` is `ctrctl`."""

import sys

from ctl.main import main

sys.exit(main())
