"""`python -m primeflow ...` is the same as the `primeflow` console script."""

from primeflow.trainer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
