"""The `keras-abkd` command line. The library never imports this package."""
