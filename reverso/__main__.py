import sys

from reverso.cli import main

sys.exit(main())
