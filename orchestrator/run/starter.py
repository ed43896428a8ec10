"""``edis-fleet init``: a first manifest written from the account, and the bundled examples.

``init`` lists the account (one auth call, then read-only ``get/details`` and ``get/images`` per
VPS), keeps the VPSes that ``only``/``exclude`` (globs on id or hostname) leave, chooses the
image most of them offer (``orchestrator.run.images``) and writes a manifest that validates:
the login and root password as ``{env: ...}`` references, a commented-out cloud-init template,
a canary-first rollout, nothing protected. Suspended VPSes and entries the session refused are
written commented out, with the reason, so that the manifest also passes ``plan``. It never
overwrites a file unless ``force``.

The examples (``example.yaml`` and the cloud-init templates) ship inside the package
(``orchestrator/examples``, read with ``importlib.resources``), so an installed tool can write
them without a clone of the repository.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from orchestrator.atomic import write_atomic
from orchestrator.errors import UsageError
from orchestrator.fleet import ENV_NAME_RE, HOSTNAME_RE, is_windows_image, takes_cloud_init
from orchestrator.run.account import (
    DEFAULT_ACCOUNT,
    AccountVps,
    Progress,
    connected,
    read_vps,
)
from orchestrator.run.images import fleet_image, offered_anywhere, own_image
from orchestrator.run.options import AccountOptions
from orchestrator.suggest import did_you_mean

TEMPLATES_DIR = "templates"
# The variable a new manifest reads the root password from (a name, not a secret).
DEFAULT_ROOT_ENV = "EDIS_ROOT_PASSWORD"
# A manifest holds no secrets (only where to read them): readable like any file the user writes.
_MODE = 0o644
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*", re.ASCII)
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"})


@dataclass(frozen=True)
class InitResult:
    """What ``init`` wrote: the manifest, any templates, and what it chose.

    ``vps`` entries are in the manifest, ``commented`` (id, reason) are written commented out
    (suspended, or unusable), ``left_out`` were dropped by ``only``/``exclude``. ``image`` is
    the default image and ``offered_by`` how many listed VPSes offer it; ``overrides`` VPSes
    name an image of their own. ``warnings`` are worth a look before ``plan``.
    """

    written: tuple[Path, ...]
    vps: int
    commented: tuple[tuple[str, str], ...]
    left_out: int
    image: str
    offered_by: int
    overrides: int
    warnings: tuple[str, ...]


def example_files() -> dict[str, str]:
    """Return the bundled examples: relative path (``example.yaml``, ``templates/x.j2``) to
    text. Raises ``OSError`` when the package data is missing (a broken install)."""
    root = resources.files("orchestrator").joinpath("examples")
    found: dict[str, str] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for item in folder.iterdir():
            name = f"{prefix}{item.name}"
            if item.is_dir():
                if item.name != "__pycache__":
                    pending.append((item, f"{name}/"))
            else:
                found[name] = item.read_text(encoding="utf-8")
    if "example.yaml" not in found:
        raise FileNotFoundError("the bundled examples are missing from this installation")
    return dict(sorted(found.items()))


def template_files() -> dict[str, str]:
    """Return the bundled cloud-init templates, by path relative to a manifest."""
    return {k: v for k, v in example_files().items() if k.startswith(f"{TEMPLATES_DIR}/")}


def write_files(base: Path, files: Mapping[str, str], *, force: bool) -> tuple[Path, ...]:
    """Write ``files`` (relative path to text) under ``base``, making folders as needed.
    Raises ``UsageError`` before writing anything when a file exists and not ``force``, and
    ``OSError`` when a file cannot be written."""
    targets = {base / name: text for name, text in files.items()}
    _refuse_existing(list(targets), force)
    for path, text in targets.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, mode=_MODE)
    return tuple(targets)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    """Raise ``UsageError`` naming the ``paths`` that exist (a dangling symlink too), unless
    ``force``."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")


def write_example(path: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, ...]:
    """Write the bundled example manifest to ``path`` and its templates beside it (no account
    needed; it names the simulator's VPSes). Returns the files written. Raises ``UsageError``
    (a file exists and not ``force``) or ``OSError``."""
    target = Path(path)
    files = example_files()
    written = write_files(target.parent, {target.name: files["example.yaml"]}, force=force)
    return written + write_files(target.parent, template_files(), force=force)


def _matches(vps: AccountVps, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(vps.kvm_id, p)
        or (vps.hostname and fnmatch.fnmatchcase(vps.hostname, p))
        for p in patterns
    )


def pick(
    listed: Sequence[AccountVps], only: Sequence[str], exclude: Sequence[str]
) -> list[AccountVps]:
    """Return the VPSes that match any ``only`` glob (all when none given) and no ``exclude``
    glob, matched against id and hostname. Raises ``UsageError`` when an ``only`` pattern
    matches nothing (a typo would otherwise write a smaller fleet than meant)."""
    unmatched = [p for p in only if not any(_matches(v, [p]) for v in listed)]
    if unmatched:
        names = [v.kvm_id for v in listed] + [v.hostname for v in listed if v.hostname]
        raise UsageError(
            "; ".join(f"--only {p!r} matches no VPS{did_you_mean(p, names)}" for p in unmatched)
        )
    return [v for v in listed if (not only or _matches(v, only)) and not _matches(v, exclude)]


def hostnames(listed: Sequence[AccountVps]) -> dict[str, tuple[str, str | None]]:
    """Return each VPS's manifest hostname and, when it is not the one ``get/details`` gave,
    why: a valid, unique host name from details, else from the description, else from the id."""
    taken: set[str] = set()
    out: dict[str, tuple[str, str | None]] = {}
    for vps in listed:
        note: str | None = None
        name = vps.hostname
        if not HOSTNAME_RE.match(name):
            candidates = [vps.description, vps.kvm_id.replace("_", "-")]
            name = next(c for c in candidates if HOSTNAME_RE.match(c))
            note = (
                "no usable hostname in get/details"
                if not vps.hostname
                else (f"get/details hostname {json.dumps(vps.hostname)} is not a valid host name")
            )
        if name.lower() in taken:
            base, n = name, 2
            while f"{base}-{n}".lower() in taken:
                n += 1
            name, note = f"{base}-{n}", f"hostname {base} is taken by an earlier VPS"
        taken.add(name.lower())
        out[vps.kvm_id] = (name, note)
    return out


def scalar(text: str) -> str:
    """Return ``text`` as a YAML scalar: plain when that reads back as the same string, else
    double-quoted (a JSON string is a valid YAML double-quoted scalar)."""
    if _PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text)


async def init(
    path: str | os.PathLike[str],
    *,
    account: AccountOptions = DEFAULT_ACCOUNT,
    image: str | None = None,
    only: Sequence[str] = (),
    exclude: Sequence[str] = (),
    root_password_env: str = DEFAULT_ROOT_ENV,
    with_templates: bool = False,
    force: bool = False,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> InitResult:
    """Write a manifest for the account's VPSes to ``path`` (``edis-fleet init``).

    ``image`` replaces the chosen default (VPSes not offered it get their own best image);
    ``only``/``exclude`` are globs on id or hostname; ``with_templates`` also writes the
    bundled templates to ``templates/`` beside the manifest; ``progress`` hears of every VPS
    read. Read-only requests only.

    Raises ``UsageError`` (a file exists and not ``force``, login variables not set, a pattern
    or ``image`` that matches nothing, no VPS left), ``AuthenticationError``, ``ApiError``,
    ``HostNotAllowedError`` or ``OSError`` (a file cannot be written).
    """
    target = Path(path)
    names = [target.name, *(template_files() if with_templates else ())]
    # Refused before the account is read: a clash is known without a single request.
    _refuse_existing([target.parent / name for name in names], force)
    bad = [n for n in (account.email_env, account.password_env, root_password_env)
           if not ENV_NAME_RE.match(n)]  # fmt: skip
    if bad:
        raise UsageError(f"not an environment variable name: {', '.join(map(repr, bad))}")
    environ = os.environ if env is None else env
    async with connected(account, environ, progress=progress) as reader:
        everything = await read_vps(reader, power=False)
        listed = pick(everything, only, exclude)
        ready = [v for v in listed if v.usable and not v.suspended]
        lists = await reader.images([v.kvm_id for v in ready])
    readable = {e.kvm_id: e.images for e in lists if e.problem is None and e.images}
    skipped = [(v.kvm_id, _why_not(v)) for v in listed if not v.usable or v.suspended]
    skipped += [(e.kvm_id, e.problem or "no images offered") for e in lists
                if e.kvm_id not in readable]  # fmt: skip
    entries = [v for v in ready if v.kvm_id in readable]
    if not entries:
        raise UsageError(
            "no VPS to write: none matched --only/--exclude"
            if not listed
            else "no VPS to write: every matching VPS is suspended, unusable or unreadable"
        )
    chosen, offered_by = _default_image(image, readable)
    text, overrides, warnings = render_manifest(
        entries,
        readable,
        chosen,
        account=account,
        root_password_env=root_password_env,
        skipped=skipped,
        offered_by=offered_by,
    )
    written = write_files(target.parent, {target.name: text}, force=force)
    if with_templates:
        written += write_files(target.parent, template_files(), force=force)
    return InitResult(
        written=written,
        vps=len(entries),
        commented=tuple(skipped),
        left_out=len(everything) - len(listed),
        image=chosen,
        offered_by=offered_by,
        overrides=overrides,
        warnings=tuple(warnings),
    )


def _why_not(vps: AccountVps) -> str:
    if not vps.usable:
        return f"cannot be used: {vps.problem}"
    return "suspended: a suspended VPS is never touched"


def _default_image(image: str | None, offers: Mapping[str, Sequence[str]]) -> tuple[str, int]:
    if image is None:
        best, count = fleet_image(offers)
        if best is None:
            best = next(i for images in offers.values() if (i := own_image(images)))
            count = offered_anywhere(best, offers)
        return best, count
    count = offered_anywhere(image, offers)
    if not count:
        everything = {i for images in offers.values() for i in images}
        raise UsageError(
            f"image {image!r} is offered to none of these VPSes{did_you_mean(image, everything)}"
        )
    return image, count


def render_manifest(
    entries: Sequence[AccountVps],
    offers: Mapping[str, Sequence[str]],
    image: str,
    *,
    account: AccountOptions,
    root_password_env: str,
    skipped: Sequence[tuple[str, str]],
    offered_by: int,
) -> tuple[str, int, list[str]]:
    """Return the manifest text, how many VPSes name an image of their own, and warnings."""
    names = hostnames(entries)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    email, password = account.email_env, account.password_env
    lines = [
        f"# Written by `edis-fleet init` on {today} from the account's {len(entries)} VPS(es).",
        "# Read it, narrow it (or mark VPSes 'protected: true'), then validate, plan and apply",
        f"# it (apply WIPES THE DISKS). Needs {email}, {password} and {root_password_env}",
        "# in the environment.",
        "version: 1",
        "",
        "account:",
        f"  email: {{env: {email}}}",
        f"  password: {{env: {password}}}",
    ]
    if account.session_url:
        lines.append(f"  session_url: {scalar(account.session_url)}")
    else:
        lines.append("  # session_url: https://session.edisglobal.com   # the default")
    if account.extra_api_hosts:
        hosts = ", ".join(scalar(h) for h in account.extra_api_hosts)
        lines.append(f"  allowed_api_hosts: [{hosts}]")
    if account.ca_file:
        lines.append(f"  ca_file: {scalar(account.ca_file)}")
    lines += [
        "",
        "defaults:",
        f"  # Offered to {offered_by} of {len(entries)} VPS(es); `edis-fleet images --all` "
        "lists what each can install.",
        f"  image: {scalar(image)}",
        "  # One root password for every VPS, from the environment. To have edis-fleet make one",
        "  # per VPS instead (written to a 0600 file, never printed):",
        "  #   root_password: {generate: root-passwords.txt}",
        f"  root_password: {{env: {root_password_env}}}",
        "  # cloud-init user data for cloudinit_* images, rendered per VPS from a Jinja2 template",
        "  # (`edis-fleet init --with-templates` writes templates/ beside this file):",
        f"  # cloud_init: {TEMPLATES_DIR}/base.yaml.j2",
        "  # vars:",
        "  #   domain: example.net",
        "  #   timezone: Etc/UTC",
        "  # A VPS is back when TCP port 22 answers again (the default, 20 minutes at most):",
        "  # readiness: {mode: tcp, port: 22, deadline: 20m}",
        "",
        "vps:",
    ]
    overrides, warnings = 0, []
    for vps in entries:
        hostname, note = names[vps.kvm_id]
        fields = [f"id: {vps.kvm_id}", f"hostname: {scalar(hostname)}"]
        notes = [note] if note else []
        own = image
        if image not in offers[vps.kvm_id]:
            own = own_image(offers[vps.kvm_id]) or image
            overrides += 1
            fields.append(f"image: {scalar(own)}")
            notes.append(f"{image} is not offered here")
            warnings.append(f"{vps.kvm_id}: {image} is not offered there; it gets {own}")
        if not takes_cloud_init(own):
            fields.append("cloud_init: null")
        if is_windows_image(own):
            fields.append("readiness: {port: 3389}")
        comment = f"   # {'; '.join(notes)}" if notes else ""
        lines.append(f"  - {{{', '.join(fields)}}}{comment}")
        if note:
            warnings.append(f"{vps.kvm_id}: hostname {hostname} ({note})")
    if skipped:
        lines.append("  # Not reinstallable now, so left out (plan would refuse them):")
        for kvm_id, why in skipped:
            lines.append(f"  # - {{id: {kvm_id}}}   # {why}")
    lines += ["", *rollout_section(len(entries))]
    return "\n".join(lines) + "\n", overrides, warnings


def rollout_section(count: int) -> list[str]:
    """Return a canary-first ``rollout`` section for ``count`` VPSes: one VPS, then 10% (from
    20 VPSes on), then the rest; any failure in a wave stops before the next one."""
    waves = "[1]" if count == 1 else '[1, "100%"]' if count < 20 else '[1, "10%", "100%"]'
    return [
        "rollout:",
        "  concurrency: 10           # reinstalls in flight at once",
        "  rate: 5/s                 # API requests per second, for the whole run",
        f"  waves: {waves:<19}# a canary first; each wave waits for the one before",
        "  soak: 5m                  # watch the finished wave this long before the next",
        "  failure_budget:",
        "    wave: 0                 # any failure in a wave stops before the next wave",
        "    run: 1",
        "  vps_deadline: 45m         # give up on a VPS not back after this long",
        "  in_doubt: report          # never resend when the API's answer was lost",
        "  # rto: 1h                 # recovery time objective: first send to last VPS back",
    ]
