"""Command-line front end of hierarchos-jax.

The source folder is ``cli/`` in the repository; it is installed as the package
``hierarchos_cli`` (see ``wheel.force-include`` in pyproject.toml), and the console
script ``hierarchos`` runs :func:`hierarchos_cli.main.main`. Modules here only
use relative imports, so the package works under either name.

Each command group lives in its own small module that provides
``register(subparsers)``; the heavy ``hierarchos_jax`` modules are imported
lazily inside the commands so that ``hierarchos --help`` stays fast.
"""
