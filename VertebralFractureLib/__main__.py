import sys

from VertebralFractureLib.cli.entry import main

sys.exit(main())
