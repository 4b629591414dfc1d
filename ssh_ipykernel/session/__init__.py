"""The local side of a remote kernel session, by job.

* ``startcmd``: the command the remote login shell runs (a strategy: login shell, python lookup,
  ``--pre-command``, ``--sudo``; a batch scheduler's wrapper plugs in the same way);
* ``bundle``: the ``remote/`` modules shipped over the session's stdin, and their loader;
* ``events``: the keeper's JSON event lines, framed and checked;
* ``client``: ``RemoteKernel``, the session to the kernel's keeper and its lifecycle.

Nothing is imported here: the proxy loads only what it uses.
"""
