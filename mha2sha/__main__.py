import sys

from mha2sha.cli import main

sys.exit(main())
