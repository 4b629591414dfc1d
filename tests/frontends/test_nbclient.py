"""nbclient (what ``jupyter nbconvert --execute`` and papermill use) runs a notebook on the SSH kernel."""
from __future__ import annotations

import base64
import socket
import struct

import pytest

from frontend_support import require_modules

HOSTNAME_CELL = "import socket\nprint(socket.gethostname())"
HTML_CELL = "from IPython.display import HTML\nHTML('<b>from ' + socket.gethostname() + '</b>')"
# The remote env has ipykernel only (no matplotlib): a 3x2 PNG made with the standard library.
PNG_CELL = """\
import struct, zlib
from IPython.display import Image

def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))

rows = b''.join(b'\\x00' + b'\\xff\\x00\\x00' * 3 for _ in range(2))
Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 3, 2, 8, 2, 0, 0, 0))
      + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))"""


@pytest.mark.both_transports
@pytest.mark.timeout(120)
def test_nbclient_runs_a_notebook_on_the_remote_host(ssh_host, ssh_kernelspec, tmp_path):
    require_modules("nbclient", "nbformat")
    import nbformat
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(HOSTNAME_CELL), new_code_cell(HTML_CELL), new_code_cell(PNG_CELL)])
    client = NotebookClient(nb, kernel_name=ssh_kernelspec.name, timeout=60, startup_timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError (with the traceback) if a cell fails

    path = tmp_path / "executed.ipynb"  # what nbconvert --execute would save, read back
    nbformat.write(nb, path)
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.language_info.name == "python"  # from the remote kernel's kernel_info

    hostname, html, image = (cell.outputs for cell in nb.cells)
    assert [(o.output_type, o.get("name"), o.get("text")) for o in hostname] == \
        [("stream", "stdout", f"{ssh_host.hostname}\n")]
    assert ssh_host.hostname != socket.gethostname()

    assert [o.output_type for o in html] == ["execute_result"]
    assert html[0].data["text/html"] == f"<b>from {ssh_host.hostname}</b>"

    assert [o.output_type for o in image] == ["execute_result"]
    png = base64.b64decode(image[0].data["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (3, 2)
