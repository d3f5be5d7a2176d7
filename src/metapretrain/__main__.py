"""`python -m metapretrain`: the same CLI as the `metapretrain` console script."""

import sys

from metapretrain.cli import main

sys.exit(main())
