import sys

from labkit.cli import main

if __name__ == "__main__":  # importing this module (a notebook can) must not run the CLI
    sys.exit(main())
