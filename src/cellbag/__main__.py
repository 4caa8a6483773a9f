"""`python -m cellbag` (used under torchrun)."""

from cellbag.cli import main

if __name__ == "__main__":
    main()
