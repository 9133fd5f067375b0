"""Built-in lstmdet plugins, installed as ``lstmdet.plugins``.

Each module is a pluggy plugin declared in the ``lstmdet`` entry-point group of lstmdet's own
``pyproject.toml``, exactly as a third-party package declares its plugins; nothing loads these
modules by any other route.
"""
