"""Hot reload: a retrained artifact saved over a served one is served within seconds.

Each worker polls the files of its artifact-backed policies every ``reload_artifacts_s``
seconds. A change is loaded once the files have stayed the same for one more poll (so a save
still being written is not read half-way); the new policy is built in a thread, checked
against the configured models and warmed beside the old one, then swapped in. Requests
already deciding keep the policy they started with. If the new artifact cannot be loaded the
old policy keeps serving, the failure is logged and counted
(``llmdispatch_policy_reloads_total{outcome="failed"}``), and the files are tried again
when they change again. Bandit policies are not reloaded: they learn online, and replacing
one would drop what it learned (restart the gateway to replace one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from llmdispatch.artifacts import artifact_files
from llmdispatch.gateway.memory import release_free_memory
from llmdispatch.gateway.policy_loader import load_policy
from llmdispatch.policies.bandit import BanditRouter

if TYPE_CHECKING:
    from llmdispatch.gateway.config import PolicyRef
    from llmdispatch.gateway.pipeline import Gateway

log = logging.getLogger(__name__)

#: What identifies the saved state of an artifact: (mtime ns, size, inode) of each file.
Signature = tuple[tuple[int, int, int], ...] | None


def signature(ref: PolicyRef) -> Signature:
    """The artifact's files as they are now (``None`` while one of them is missing)."""
    assert ref.artifact is not None
    try:
        stats = [f.stat() for f in artifact_files(ref.artifact)]
    except OSError:  # missing (a save half-way, a folder being replaced) or unreadable
        return None
    return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in stats)


class ArtifactWatcher:
    """Reloads a gateway's artifact-backed policies when their files change."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.refs = {
            name: ref
            for name, ref in gateway.cfg.policies.items()
            if ref.artifact is not None and not isinstance(gateway.policies.get(name), BanditRouter)
        }
        # The files as they were when the gateway loaded them (a save since is a change).
        self.loaded: dict[str, Signature] = {
            n: gateway.artifact_signatures.get(n) for n in self.refs
        }
        self.seen: dict[str, Signature] = dict(self.loaded)

    async def check(self) -> list[str]:
        """One poll: reload what changed and has settled; returns the policies swapped in."""
        swapped = []
        for name, ref in self.refs.items():
            now = signature(ref)
            settled, self.seen[name] = now == self.seen[name], now
            if now is None or now == self.loaded[name] or not settled:
                continue
            before, self.loaded[name] = self.loaded[name], now
            try:
                policy = await asyncio.to_thread(load_policy, name, ref, self.gateway.cfg)
            except Exception as exc:  # a bad artifact must not take the gateway down
                if signature(ref) != now:  # saved again while loading: retry once settled
                    self.loaded[name] = before
                    continue
                self.gateway.metrics.policy_reloads.labels(name, "failed").inc()
                log.error(
                    "policy %r: the changed artifact %s was not loaded (%s: %s); "
                    "the previous one keeps serving",
                    name,
                    ref.artifact,
                    type(exc).__name__,
                    exc,
                )
                continue
            self.gateway.policies[name] = policy
            del policy
            # What loading freed, and the old policy once no request holds it any more.
            await asyncio.to_thread(release_free_memory)
            self.gateway.metrics.policy_reloads.labels(name, "ok").inc()
            log.info("policy %r: reloaded from %s", name, ref.artifact)
            swapped.append(name)
        return swapped

    async def run(self, interval_s: float) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.check()
            except Exception:  # keep watching whatever one poll met
                log.exception("artifact watcher: a poll failed")


@contextlib.asynccontextmanager
async def watching(gateway: Gateway, interval_s: float | None) -> AsyncIterator[None]:
    """Run an :class:`ArtifactWatcher` for the life of the application (none when off)."""
    watcher = ArtifactWatcher(gateway)
    task = None
    if interval_s is not None and watcher.refs:
        task = asyncio.create_task(watcher.run(interval_s))
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
