import sys

from faber_runlog._frontends.cli import main

sys.exit(main())
