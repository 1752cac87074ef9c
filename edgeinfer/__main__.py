"""``python3 -m edgeinfer``: the command line where the console script is not on PATH
(a ``pip3 install --user`` on a Jetson puts it in ~/.local/bin, which a non-login ssh
session may not search)."""

from .cli import entry

if __name__ == "__main__":  # pragma: no cover
    entry()
