"""Run-mode decisions shared by eval, chat and generation."""

from __future__ import annotations


def test_hebbian_decision_follows_the_reference():
    from hierarchos_jax.config import HierarchosConfig
    from hierarchos_jax.model.mode import hebbian_writes_enabled

    cfg = HierarchosConfig.from_preset("tiny")
    assert not hebbian_writes_enabled(cfg, allow_hebbian_update=True)  # untrained val_proj
    assert not hebbian_writes_enabled(cfg, suppress_hebbian=False)
    trained = cfg.replace(val_proj_trained=True)
    assert not hebbian_writes_enabled(trained)  # suppressed by default
    assert hebbian_writes_enabled(trained, allow_hebbian_update=True)
    assert hebbian_writes_enabled(trained, suppress_hebbian=False)
    assert hebbian_writes_enabled(cfg.replace(allow_untrained_hebbian_writer=True), allow_hebbian_update=True)
