"""Pre-flight: check a selection against the live account before anything is wiped.

One auth call (through the session book) tells which VPSes exist and which are suspended;
then each selected VPS's own image list is fetched (read-only calls, a few at a time) and the
requested image is looked up in it, with a "did you mean" when it is missing. Nothing here
sends a destructive request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio

from orchestrator.edis.client import EdisClient
from orchestrator.edis.session import SessionBook
from orchestrator.errors import ApiError
from orchestrator.run.api import ReadRetries
from orchestrator.run.limits import RateLimiter
from orchestrator.suggest import did_you_mean


@dataclass(frozen=True)
class Check:
    """One VPS to check: its id, the image it should get, and where the manifest names it."""

    kvm_id: str
    image: str
    where: str = ""


@dataclass
class PreflightReport:
    """What pre-flight learned. ``problems`` block a run; ``images`` maps kvm id to its list."""

    problems: list[str] = field(default_factory=list)
    images: dict[str, tuple[str, ...]] = field(default_factory=dict)
    api_hosts: dict[str, str] = field(default_factory=dict)
    account_size: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing blocks the run."""
        return not self.problems


async def preflight(
    checks: Sequence[Check],
    *,
    client: EdisClient,
    book: SessionBook,
    concurrency: int = 8,
    retries: ReadRetries | None = None,
    limiter: RateLimiter | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> PreflightReport:
    """Check every selected VPS against the account; return all problems at once.

    Image lists are read with ``retries`` (read-only calls: a passing 502 is retried), each
    after a rate token from ``limiter`` when one is given. ``on_progress(done, total)`` is
    called after the auth call and after each image list (a view shows it; it must not
    raise). Raises the client's ``ApiError``
    subclasses only for the auth call itself (a wrong password is ``AuthenticationError``);
    per-VPS failures become problems in the report.
    """
    retries = retries or ReadRetries(limiter=limiter)
    report = PreflightReport()
    accounts = await book.accounts()
    unusable = book.unusable
    report.account_size = len(accounts) + len(unusable)
    reachable: list[Check] = []
    for check in checks:
        prefix = f"{check.where}: " if check.where else ""
        cred = accounts.get(check.kvm_id)
        if cred is None:
            why = unusable.get(check.kvm_id)
            if why is None:
                hint = did_you_mean(check.kvm_id, accounts)
                report.problems.append(f"{prefix}{check.kvm_id} is not in the account{hint}")
            else:
                report.problems.append(f"{prefix}{check.kvm_id} cannot be used: {why}")
            continue
        if cred.suspended:
            report.problems.append(
                f"{prefix}{check.kvm_id} is suspended; a suspended VPS is never touched"
            )
            continue
        report.api_hosts[check.kvm_id] = cred.api_host
        reachable.append(check)

    slots = anyio.CapacityLimiter(max(1, concurrency))
    fetched: dict[str, tuple[str, ...] | str] = {}
    unique = list(dict.fromkeys(c.kvm_id for c in reachable))
    if on_progress is not None:
        on_progress(0, len(unique))

    async def fetch(kvm_id: str) -> None:
        async with slots:

            async def attempt() -> list[str]:
                if limiter is not None:
                    await limiter.acquire("call")
                return await book.call(kvm_id, client.images)

            try:
                fetched[kvm_id] = tuple(await retries(attempt))
            except ApiError as exc:
                fetched[kvm_id] = f"could not list its images: {exc.message}"
            if on_progress is not None:
                on_progress(len(fetched), len(unique))

    async with anyio.create_task_group() as tg:
        for kvm_id in unique:
            tg.start_soon(fetch, kvm_id)

    for check in reachable:
        prefix = f"{check.where}: " if check.where else ""
        images = fetched[check.kvm_id]
        if isinstance(images, str):
            report.problems.append(f"{prefix}{check.kvm_id}: {images}")
            continue
        report.images[check.kvm_id] = images
        if check.image not in images:
            report.problems.append(
                f"{prefix}{check.kvm_id}: image {check.image!r} is not offered for this VPS"
                f"{did_you_mean(check.image, images)}"
            )
    return report
