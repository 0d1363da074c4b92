"""The rate budget each run's shards share: one per run in a worker process, or one per run for
every worker at once when the worker was given ``--budget redis://...``.

Without it, every shard a worker runs would make its own budget from the config, so a worker
running ``--shards-at-once 3`` could send three times the limit, and N workers N times. With
:class:`Budgets`, the shards of one run in one worker take their slots from one
:class:`~asyncingest.limits.rate_budget.Budget`; with a Redis URL, from one
:class:`~asyncingest.limits.redis_budget.RedisBudget` named after the run, which every worker
serving the run shares (the same keys in Redis), so the windows hold across machines.
"""

from __future__ import annotations

from ..config.models import PipelineConfig
from ..limits.rate_budget import Budget, RateBudget

__all__ = ["Budgets"]


class Budgets:
    """One :class:`RateBudget` per run id, made on first use from that run's config and kept for
    the worker's life (closed by :meth:`aclose`)."""

    def __init__(self, redis_url: str | None = None) -> None:
        self.redis_url = redis_url
        self._budgets: dict[str, RateBudget] = {}

    def __repr__(self) -> str:
        where = "redis" if self.redis_url else "in-process"
        return f"Budgets({where}, runs={sorted(self._budgets)})"

    def for_run(self, run_id: str, cfg: PipelineConfig) -> RateBudget:
        """The budget of ``run_id`` (its windows are the config's ``api.rate_limits``)."""
        budget = self._budgets.get(run_id)
        if budget is None:
            if self.redis_url is not None:
                from ..limits.redis_budget import RedisBudget

                budget = RedisBudget(self.redis_url, cfg.api.rate_limits, name=f"run-{run_id}")
            else:
                budget = Budget(cfg.api.rate_limits, name=f"run-{run_id}")
            self._budgets[run_id] = budget
        return budget

    async def aclose(self) -> None:
        """Close the Redis budgets (their pending releases recorded first)."""
        from ..limits.redis_budget import RedisBudget

        budgets, self._budgets = self._budgets, {}
        for budget in budgets.values():
            if isinstance(budget, RedisBudget):
                await budget.aclose()
