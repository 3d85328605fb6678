"""The reconciler: advances every running rollout, one tick at a time, from the database's rows alone.

All state lives in the database (`cloud_registry.rollouts` writes it), so a registry restarted
mid-rollout carries on from the rows, and with several replicas on PostgreSQL each rollout is
advanced by one of them at a time (`SELECT ... FOR UPDATE SKIP LOCKED`). The gates judge on
`cloud_registry.rollout_evidence`.

One tick of a running rollout:
0. devices that joined its selection since it was created (enrolled into its
   group, moved into it, tagged) and are in no other active rollout join its
   next wave (a wave appended for them while the last one runs), as hawkBit's
   dynamic groups do;
1. gate values over every device of the started waves (see `gates`);
2. a gate above its threshold: halt, and order every updated device back to its
   previous version with a signed `RollbackOrder`;
3. else, the current wave: once the share of its devices that SUCCEEDED meets
   the success threshold (and, if the policy asks, enough inferences came in),
   it must stay healthy for `bake_s`; then the next wave starts, or the rollout
   completes. A wave that does not meet its threshold within `wave_timeout_s`
   halts the rollout the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud_registry import gates, rollout_joiners, rollouts
from cloud_registry import models as m
from cloud_registry.crud import Publication
from cloud_registry.rollout_evidence import evaluate, waiting_for_evidence
from registry_api import schemas

log = logging.getLogger("cloud_registry.rollouts")


class Reconciler:
    """Advances every running rollout; `tick` is one pass, `run` loops until stopped."""

    actor = "reconciler"

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        command_key: Ed25519PrivateKey,
        public_url: str,
        publish: Callable[[list[Publication]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.factory, self.command_key, self.public_url = factory, command_key, public_url
        self.publish, self.clock = publish, clock

    def tick(self) -> None:
        with self.factory() as session:
            ids = list(
                session.scalars(
                    select(m.Rollout.id).where(m.Rollout.state == "running").order_by(m.Rollout.id)
                )
            )
        for rollout_id in ids:
            try:
                self._step_one(rollout_id)
            except Exception:  # one broken rollout must not stop the others
                log.exception("rollout %s: reconcile failed", rollout_id)

    def _step_one(self, rollout_id: int) -> None:
        publications: list[Publication] = []
        with self.factory() as session, session.begin():
            rollout = session.scalar(
                select(m.Rollout)
                .where(m.Rollout.id == rollout_id, m.Rollout.state == "running")
                .with_for_update(skip_locked=True)
            )
            if rollout is None:  # finished meanwhile, or another replica holds it
                return
            publications = self.step(session, rollout)
        if publications:
            self.publish(publications)

    def step(self, session: Session, rollout: m.Rollout) -> list[Publication]:
        now = self.clock()
        policy = schemas.GatePolicy.model_validate(rollout.policy)
        rollout_joiners.add_joiners(session, rollout, self.actor)
        values = evaluate(session, rollout)
        crossed = gates.crossed_gates(values, policy)
        if crossed:
            self._record_values(session, rollout, {**values, "waiting": None}, crossed, now)
            thresholds = {
                "failure_rate": policy.max_failure_rate,
                "error_rate_increase": policy.max_error_rate_increase,
                "p95_regression": policy.max_p95_regression,
                "confidence_psi": policy.max_confidence_psi,
            }
            reason = "; ".join(f"{g} {values[g]:.4g} > {thresholds[g]:g}" for g in crossed)
            publications = rollouts.revert(
                session, rollout, f"health gate crossed: {reason}", self.command_key, self.public_url
            )
            rollouts.finish(rollout, rollouts.move(rollout, "halt"), f"health gate crossed: {reason}")
            rollouts.decide(
                session,
                rollout,
                "halted",
                f"health gate crossed in wave {rollout.current_wave + 1}: {reason}",
                self.actor,
                values=values,
                rolled_back=len(publications),
            )
            return publications
        wave = rollout.wave_rows[rollout.current_wave]
        entries = [e for e in rollout.devices if e.wave == wave.index]
        succeeded = sum(e.state == "succeeded" for e in entries)
        share = succeeded / len(entries) if entries else 1.0
        short = waiting_for_evidence(values, policy, rollout.version.version)
        if short is None and policy.min_inferences and values["inferences_after"] < policy.min_inferences:
            short = f"{values['inferences_after']} of {policy.min_inferences} inferences after the update"
        enough_data = short is None
        threshold_met = gates.meets(share, policy.success_threshold)
        if not threshold_met:
            waiting = (
                f"wave {wave.index + 1}: {succeeded}/{len(entries)} devices succeeded, "
                f"{policy.success_threshold:.0%} needed"
            )
        elif not enough_data:
            waiting = f"wave {wave.index + 1}: gates wait for evidence: {short}"
        else:  # constant while it bakes, so the evaluations kept do not change every tick
            waiting = f"wave {wave.index + 1}: baking, healthy for {policy.bake_s:g} s before the next step"
        if threshold_met and enough_data:
            if wave.healthy_since is None:
                wave.healthy_since = now
                rollouts.decide(
                    session,
                    rollout,
                    "wave_threshold_met",
                    f"wave {wave.index + 1}: {succeeded}/{len(entries)} succeeded ({share:.0%} >= {policy.success_threshold:.0%}); "
                    f"watching it for {policy.bake_s:g} s",
                    self.actor,
                    values=values,
                )
            if now - wave.healthy_since >= policy.bake_s:
                wave.state, wave.completed_at = "completed", now
                if wave.index + 1 >= len(rollout.wave_rows):
                    rollouts.finish(
                        rollout,
                        rollouts.move(rollout, "complete"),
                        "every wave met its success threshold with gates below their limits",
                    )
                    rollouts.decide(
                        session,
                        rollout,
                        "completed",
                        f"all {len(rollout.wave_rows)} waves completed",
                        self.actor,
                        values=values,
                    )
                    self._record_values(session, rollout, {**values, "waiting": None}, crossed, now)
                    return []
                rollouts.decide(
                    session,
                    rollout,
                    "wave_completed",
                    f"wave {wave.index + 1} healthy for {policy.bake_s:g} s",
                    self.actor,
                    values=values,
                )
                publications = rollouts.start_wave(
                    session, rollout, wave.index + 1, self.actor, self.public_url
                )
                following = rollout.wave_rows[wave.index + 1]
                waiting = (
                    f"wave {following.index + 1}: 0/{following.size} devices succeeded, "
                    f"{policy.success_threshold:.0%} needed"
                )
                self._record_values(session, rollout, {**values, "waiting": waiting}, crossed, now)
                return publications
        self._record_values(session, rollout, {**values, "waiting": waiting}, crossed, now)
        if threshold_met and enough_data:
            return []
        if wave.healthy_since is not None:  # it was met, and no longer is (a late failure)
            wave.healthy_since = None
            rollouts.decide(
                session,
                rollout,
                "wave_threshold_lost",
                f"wave {wave.index + 1}: {succeeded}/{len(entries)} succeeded",
                self.actor,
            )
        if wave.started_at is not None and now - wave.started_at > policy.wave_timeout_s:
            if threshold_met:
                reason = (
                    f"wave {wave.index + 1} did not give its gates enough evidence in "
                    f"{policy.wave_timeout_s:g} s ({short})"
                )
            else:
                reason = (
                    f"wave {wave.index + 1} did not meet its success threshold in {policy.wave_timeout_s:g} s "
                    f"({succeeded}/{len(entries)} succeeded)"
                )
            publications = rollouts.revert(session, rollout, reason, self.command_key, self.public_url)
            rollouts.finish(rollout, rollouts.move(rollout, "halt"), reason)
            rollouts.decide(
                session, rollout, "halted", reason, self.actor, values=values, rolled_back=len(publications)
            )
            return publications
        return []

    def _record_values(
        self, session: Session, rollout: m.Rollout, values: dict[str, Any], crossed: list[str], now: float
    ) -> None:
        """Keep one evaluation per tick while they change, at least one a minute when they do not."""
        last = session.scalar(
            select(m.GateEvaluation)
            .where(m.GateEvaluation.rollout_id == rollout.id)
            .order_by(m.GateEvaluation.id.desc())
            .limit(1)
        )
        if (
            last is not None
            and last.values == values
            and last.wave == rollout.current_wave
            and now - last.at < 60
            and not crossed
        ):
            return
        session.add(
            m.GateEvaluation(
                rollout_id=rollout.id, at=now, wave=rollout.current_wave, values=values, crossed=crossed
            )
        )
