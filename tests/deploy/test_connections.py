"""The connection cap's default, from the soft fd limit."""

from __future__ import annotations

import resource

from fmesh.deploy.connections import MAX_CONNECTIONS, default_max_connections


def test_the_default_cap_leaves_a_reserve_of_file_descriptors():
    assert default_max_connections(1024) == 768  # 256 kept for the mesh's own files, replicas and clients
    assert default_max_connections(256) == 128  # never more than half kept back
    assert default_max_connections(20_000) == MAX_CONNECTIONS  # idle sockets past it only cost memory
    assert default_max_connections(resource.RLIM_INFINITY) == MAX_CONNECTIONS


def test_the_default_cap_is_below_this_process_fd_limit():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert default_max_connections() < soft or soft == resource.RLIM_INFINITY
