"""``python -m retrievalkit``: the ``rkit`` command line (also torchrun's ``-m retrievalkit``)."""

from .cli import main

if __name__ == "__main__":  # not when a spawned DataLoader worker imports this module
    main()
