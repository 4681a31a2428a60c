"""The mesh node, its control plane and the server around them.

httpx imports its command-line client (rich, pygments, click: 3 MiB of the mesh's memory)
whenever those are installed, and fmesh's CLI installs them; the mesh never uses it, so
that import is turned off for every process that loads the mesh.
"""

import sys

sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
