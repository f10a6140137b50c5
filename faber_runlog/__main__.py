import sys

from faber_runlog._cli import main

sys.exit(main())
