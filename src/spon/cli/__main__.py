import sys

from spon.cli.main import main

sys.exit(main())
