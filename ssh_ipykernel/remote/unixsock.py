"""Listening unix sockets of the remote's daemons (keeper, warm pool, agent server), made one way.

Shipped with the agent and with the warm pool's program: standard library only, Python >= 3.8.
"""
import os


def listen_unix(path: str, backlog: int):  # noqa: ANN201 - a socket.socket
    """A unix socket listening at ``path``, readable and writable by its owner only.

    Bound under a temporary name and renamed once it listens: a client never finds the name
    refusing connections, which others read as the socket of a dead daemon and remove (the
    keeper's stale sweep). By names relative to its directory: the absolute path may pass the
    ~100-byte limit of socket addresses. The working directory is restored. Raises OSError."""
    import socket

    directory, name = os.path.split(path)
    cwd = os.getcwd()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = ".%s.%d" % (name, os.getpid())
    old_umask = os.umask(0o177)
    try:
        os.chdir(directory or ".")
        listener.bind(temporary)
        listener.listen(backlog)
        os.rename(temporary, name)
    except BaseException:
        listener.close()
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    finally:
        os.umask(old_umask)
        os.chdir(cwd)
    return listener
