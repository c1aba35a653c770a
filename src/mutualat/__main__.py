import sys

from mutualat.cli import main

sys.exit(main())
