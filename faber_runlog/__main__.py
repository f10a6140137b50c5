import sys

from faber_runlog.cli import main

sys.exit(main())
