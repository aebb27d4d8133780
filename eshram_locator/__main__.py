"""``python -m eshram_locator`` runs the command line."""

from eshram_locator.cli import main

if __name__ == "__main__":
    main()
