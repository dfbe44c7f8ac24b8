"""The fleet's shared store in process: :class:`FleetStateCore` behind the async methods the router's client
(``deployments.fleet_state.FleetState``) offers, for unit tests of what the router keeps there."""

from deployments.fleet_state_core import FleetStateCore


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class InProcessStore:
    """Every call answers from one in-process core; ``fail`` makes the calls that guard a request raise, as a
    state actor that does not answer would."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.core = FleetStateCore(clock=clock or Clock())
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise TimeoutError("the state actor did not answer")

    async def put_if_absent(self, ns, key, value, ttl_s=None):
        self._check()
        return self.core.put_if_absent(ns, key, value, ttl_s)

    async def put(self, ns, key, value, ttl_s=None):
        self.core.put(ns, key, value, ttl_s)

    async def delete(self, ns, key):
        return self.core.delete(ns, key)

    async def get(self, ns, key):
        return self.core.get(ns, key)

    async def items(self, ns):
        return self.core.items(ns)

    async def consume(self, ns, key, amount, limit, window_s):
        self._check()
        return self.core.consume(ns, key, amount, limit, window_s)

    async def acquire(self, ns, key, limit, ttl_s):
        self._check()
        return self.core.acquire(ns, key, limit, ttl_s)

    async def release(self, ns, key, lease_id):
        self._check()
        return self.core.release(ns, key, lease_id)

    def held(self, ns: str, key: str) -> int:
        """Leases ``ns/key`` holds now."""
        return self.core.acquire(ns, key, 0, 1.0).held
