"""`python -m dyembed` runs the command-line interface."""

from dyembed_cli.app import main

if __name__ == "__main__":
    main()
