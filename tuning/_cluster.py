"""``fsrf cluster check FILE``: a Ray cluster-launcher YAML checked before ``ray up`` touches a machine.

Three layers, each failing with one line that names the file and the key:

1. the file: present, not empty, a YAML mapping;
2. Ray's own preparation and schema validation (what ``ray up`` runs first, minus cloud calls);
3. this project's invariants: the pinned versions and the project installed on every node,
   the repository uploaded, token authentication on every ``ray start``, the dashboard on the
   head's loopback, GPU node types declaring their GPUs, counts that are numbers, no
   credentials in the file; and for a filled-in file (not ``--template``), no placeholder left
   (``HEAD_ADDRESS``, ``WORKER_ADDRESS_1``, ``USER``), a ``head_ip`` and ``worker_ips`` that
   are addresses or host names, and an SSH key file that exists.

The shipped templates in ``cluster/`` hold placeholders on purpose: ``--template`` checks
everything else.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from fsrf import FSRFError

PINNED = ('"ray[tune]==2.60.0"', '"optuna==5.0.0"', '"pyarrow==26.0.1"')
"""The versions every node installs (the ones the search's code is written against)."""

PLACEHOLDER = re.compile(r"^(HEAD_ADDRESS|WORKER_ADDRESS(_\d+)?|USER|[A-Z][A-Z0-9]*_ADDRESS(_\d+)?)$")
"""A value the shipped templates leave for the user to fill in."""

_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_SECRETS = ("aws_secret_access_key", "aws_access_key_id", "password", "-----begin")
_COUNTS = ("max_workers", "min_workers", "upscaling_speed", "idle_timeout_minutes")


def _fail(path: Path, key: str, message: str) -> FSRFError:
    return FSRFError(f"{path}: {key}: {message}")


def _is_host(value: Any) -> bool:
    if not isinstance(value, str) or not value:
        return False
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return bool(_HOST.match(value)) and not value.replace(".", "").isdigit()


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FSRFError(f"{path}: no such cluster file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise FSRFError(f"{path}: empty file, expected a Ray cluster-launcher YAML mapping")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise FSRFError(f"{path}: {where}not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if not isinstance(raw, dict):
        raise FSRFError(f"{path}: holds a {type(raw).__name__}, expected a Ray cluster-launcher YAML mapping")
    return raw


def _check_counts(path: Path, raw: dict[str, Any]) -> None:
    """Counts as numbers (Ray's schema message for a string count names no key)."""
    places = [(k, raw.get(k)) for k in _COUNTS if k in raw]
    for name, node in (raw.get("available_node_types") or {}).items():
        if isinstance(node, dict):
            places += [(f"available_node_types.{name}.{k}", node[k]) for k in ("min_workers", "max_workers") if k in node]
            for res, value in (node.get("resources") or {}).items() if isinstance(node.get("resources"), dict) else ():
                places.append((f"available_node_types.{name}.resources.{res}", value))
    for key, value in places:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise _fail(path, key, f"{value!r} is not a count, expected a number >= 0")


def _check_filled(path: Path, raw: dict[str, Any]) -> None:
    """No placeholder left, addresses that are addresses, a key file that exists."""
    provider = raw.get("provider") or {}
    auth = raw.get("auth") or {}
    fields = [("provider.head_ip", provider.get("head_ip")), ("auth.ssh_user", auth.get("ssh_user"))]
    fields += [(f"provider.worker_ips[{i}]", ip) for i, ip in enumerate(provider.get("worker_ips") or [])]
    for key, value in fields:
        if isinstance(value, str) and PLACEHOLDER.match(value):
            raise _fail(path, key, f"{value!r} is a placeholder of the template; fill in "
                        + ("the account on every machine" if key == "auth.ssh_user" else "this machine's address"))
    if provider.get("type") == "local":
        for key, value in fields:
            if key != "auth.ssh_user" and value is not None and not _is_host(value):
                raise _fail(path, key, f"{value!r} is not an IP address or host name")
        if not provider.get("head_ip"):
            raise _fail(path, "provider.head_ip", "missing, expected the head machine's address")
        if not auth.get("ssh_user"):
            raise _fail(path, "auth.ssh_user", "missing, expected the account on every machine")
    key_file = auth.get("ssh_private_key")
    if key_file is not None:
        found = Path(str(key_file)).expanduser()
        if not found.is_file():
            raise _fail(path, "auth.ssh_private_key", f"{key_file} does not exist on this machine "
                        "(expected the private key of auth.ssh_user; `ssh-keygen -t ed25519` makes one)")


def check_cluster_config(raw: dict[str, Any], *, path: str | Path = "<config>", template: bool = True) -> dict[str, Any]:
    """Ray's preparation and validation of a parsed cluster YAML, plus the project's invariants.

    Args:
        raw: the parsed file.
        path: the file, for messages.
        template: True for a template (placeholders allowed, key file not looked for).

    Returns:
        The config as Ray prepared it (defaults filled in).

    Raises:
        FSRFError: one line naming the file, the key and what was expected.
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = Path(path)
    _check_counts(path, raw)
    if not template:
        _check_filled(path, raw)
    try:
        config = prepare_config(copy.deepcopy(raw))
        validate_config(config)
    except Exception as err:  # noqa: BLE001 - jsonschema's ValidationError, RuntimeError, ValueError, KeyError
        first = " ".join(str(err).split("\n\n")[0].split())[:300]
        raise FSRFError(f"{path}: Ray's schema: {first}") from None
    for name, node in config.get("available_node_types", {}).items():
        if "gpu" in name.lower() and node.get("resources", {}).get("GPU", 0) < 1:
            raise _fail(path, f"available_node_types.{name}.resources", "a GPU node type must declare GPU >= 1")
    setup = "\n".join(config.get("setup_commands", []))
    for pin in PINNED:
        if pin not in setup:
            raise _fail(path, "setup_commands", f"must install the pinned {pin}")
    if "fsrf-tune" not in setup or "pip install" not in setup:
        raise _fail(path, "setup_commands", "must pip-install this project (~/fsrf-tune)")
    if "." not in config.get("file_mounts", {}).values():
        raise _fail(path, "file_mounts", "must upload this repository ('.'); ray submit uploads only the script")
    head = " ".join(config.get("head_start_ray_commands", []))
    if "--dashboard-host=127.0.0.1" not in head:
        raise _fail(path, "head_start_ray_commands",
                    "the dashboard must stay on 127.0.0.1 (--dashboard-host=127.0.0.1)")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config.get(key, []) if "ray start" in c]
        if not starts or not all("RAY_AUTH_MODE=token" in c for c in starts):
            raise _fail(path, key, "every `ray start` must run with RAY_AUTH_MODE=token")
    text = yaml.safe_dump(raw).lower()
    for secret in _SECRETS:
        if secret in text:
            raise _fail(path, secret, "no credentials in a cluster file")
    return config


def check_cluster_file(path: str | Path, *, template: bool = False) -> dict[str, Any]:
    """:func:`check_cluster_config` of the file at ``path`` (empty, unreadable or non-mapping files refused)."""
    path = Path(path)
    return check_cluster_config(_read(path), path=path, template=template)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fsrf cluster", description="check a Ray cluster-launcher YAML before `ray up`")
    sub = p.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="Ray's schema plus this project's invariants; one line per problem")
    check.add_argument("file", help="the cluster YAML (e.g. your copy of cluster/onprem.yaml)")
    check.add_argument("--template", action="store_true",
                       help="a template: placeholders (HEAD_ADDRESS, USER) allowed, the key file not looked for")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``check FILE``: 0 when the file passes, 2 with one line when it does not."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        config = check_cluster_file(args.file, template=args.template)
    except FSRFError as err:
        print(f"fsrf cluster: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    provider = config["provider"]
    size = (f"head + {len(provider.get('worker_ips') or [])} worker(s)" if provider["type"] == "local"
            else f"{len(config.get('available_node_types', {}))} node type(s)")
    print(f"{args.file}: ok ({provider['type']} provider, {size}; Ray's schema and "
          f"fsrf's invariants{'; template' if args.template else ''})")
    return 0


__all__ = ["check_cluster_config", "check_cluster_file", "main"]
