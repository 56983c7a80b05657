"""Ray for ``--ray``: starting or joining the cluster, cancelling a run's tasks, one-line errors.

Ray is imported when a run starts (:mod:`.runners`' ``RayRunner``), never by importing this.
"""

from __future__ import annotations

import logging
from typing import Any

from mergekit_safety.core.errors import ConfigError, install_hint
from mergekit_safety.tuning.engine import describe_error

LOCAL = "local"
"""``--ray`` without an address: start a cluster on this machine for the run, stop it after."""

CANCEL_GRACE_S = 10.0
"""After a polite cancel (tasks unwind and remove their merges), how long before killing them."""


def start_ray(ray: Any, address: str, workers: int | None) -> None:
    """Start or join the cluster. Ray's core replaces the process's SIGTERM handler with one that
    exits on the spot; the one before it (the CLI's: unwind, so temporary merges are removed)
    is put back."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
    quiet = _DropTokenNotice()
    notice.addFilter(quiet)  # every run's own cluster: a notice on every run buries the result
    try:
        if address == LOCAL:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"--ray {address}: cannot join the Ray cluster: {error}") from None
    finally:
        notice.removeFilter(quiet)
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)


TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Where Ray says "Token authentication is enabled for this Ray cluster" as it starts one."""


class _DropTokenNotice:
    """A logging filter: drop Ray's notice that the cluster it starts uses token authentication
    (its default, nothing to act on), keep every other record (a disabled-auth warning too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for")


def cancel_tasks(ray: Any, pending: list[Any]) -> None:
    """Ask every unfinished task to stop (it unwinds and removes its merge); kill the rest."""
    if not pending:
        return
    for ref in pending:
        ray.cancel(ref, force=False)
    _, stuck = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_GRACE_S)
    for ref in stuck:
        ray.cancel(ref, force=True)


def task_error(error: BaseException) -> str:
    """The task's own exception, one line: Ray wraps it with the remote traceback."""
    return describe_error(getattr(error, "cause", None) or error)


RAY_MISSING = f"--ray needs Ray: {install_hint('ray', 'ray[client]')}"
RAY_CLIENT_MISSING = (
    f"--ray ray://...: a ray:// address needs Ray's client (grpcio): "
    f"{install_hint('ray', 'ray[client]')}"
)


def check_ray_installed(address: str) -> None:
    """Ray (and, for a ``ray://`` address, its client) is installed: found without importing
    it, so a missing extra is one line before any model is evaluated."""
    from importlib.util import find_spec

    if find_spec("ray") is None:
        raise ConfigError(RAY_MISSING)
    if address.startswith("ray://") and find_spec("grpc") is None:
        raise ConfigError(RAY_CLIENT_MISSING)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray
