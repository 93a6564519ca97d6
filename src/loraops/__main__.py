"""`python -m loraops ...` (and `torchrun -m loraops ...`) is the `loraops` command."""

from loraops.cli import main

if __name__ == "__main__":
    main()
