"""`python -m supervisor` is `ctrd`."""

import sys

from supervisor.main import main

sys.exit(main())
