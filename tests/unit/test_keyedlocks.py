"""KeyedLocks: callers of one key take turns, other keys do not wait, nothing is kept after."""

from __future__ import annotations

import asyncio

from supervisor.keyedlocks import KeyedLocks


def test_one_key_takes_turns_others_do_not_wait_and_none_is_kept():
    locks = KeyedLocks()
    order: list[str] = []

    async def use(key: str, name: str, hold: float) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(hold)
            order.append(f"{name}-")

    async def run() -> None:
        first = asyncio.create_task(use("a", "a1", 0.05))
        await asyncio.sleep(0)
        await asyncio.gather(use("a", "a2", 0), use("b", "b1", 0))
        await first
        assert len(locks) == 0

    asyncio.run(run())
    assert order.index("a1-") < order.index("a2+")  # the same key waited
    assert order.index("b1-") < order.index("a1-")  # another key did not
