"""Warm launcher for Flower's per-message `flwr-clientapp` process (issue #11).

Flower 1.41's SuperExec starts a fresh `flwr-clientapp` interpreter, found by name on the
SuperNode's PATH, for every message; that interpreter spends about a second importing Flower
before it does anything. The warm launcher keeps that second out of each message without
changing Flower:

- `zygote` — one long-lived process per node, same OS user as the SuperNode, under the same
  supervision (`atoll.processes.spawn`). It imports Flower's `flwr-clientapp` entry point once
  and listens on a Unix socket in a private directory; per request it forks, and the child
  (`child`) runs Flower's own entry point, unchanged, with the request's argv, environment,
  working directory and standard streams.
- `shim` — the executable named `flwr-clientapp` in a directory prepended to the SuperNode's
  PATH only (`install`). It hands its argv, environment, cwd and stdio descriptors to the zygote,
  forwards SIGTERM/SIGINT/SIGHUP and exits with the child's status. With no zygote, or when the
  zygote refuses, it execs the real `flwr-clientapp`: correctness never depends on the zygote.
- `protocol` — the bytes on that socket (standard library only, shared by both ends);
  `environment` — which requests' environments the zygote's imports are valid for; `install` —
  the node's launcher directory, the shim script, the zygote's command line.

Trust argument, in short (details in each module):

1. Flower's code runs unchanged: the child calls the console-script entry point the venv's
   `flwr-clientapp` script calls, from the same interpreter and site-packages, with the same
   argv, environment, cwd and stdio; a request whose environment differs in a variable the
   zygote's imports read is refused (`environment`), so import-time behaviour is the same too.
2. The app still comes from the signed FAB: the zygote never imports the app — not `client.*`,
   not `common.*` (it even drops its own `client.launcher` modules from `sys.modules`) — so
   Flower installs the FAB and imports the app from the installed FAB directory in the child
   exactly as in a fresh process. The relay reads its signed manifest beside its own file: an
   app loaded from anywhere else would be refused by the node runtime.
3. The socket is private to the node's user: directory 0700, socket 0600, and the zygote serves
   only peers with its own uid (SO_PEERCRED). Whoever can connect could already run the real
   `flwr-clientapp` as that user; the zygote runs nothing a request names — only Flower's entry.
"""
