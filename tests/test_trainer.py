"""The plugin's trainer additions: per-epoch times and the paper's step learning-rate decay."""
import pytest

from recbole_llm4sbr.quick_start import build, make_config
from tinydata import write_tiny_dataset


@pytest.mark.parametrize("step, gamma, expected", [(1, 0.5, 1e-3 * 0.5 ** 3), (2, 0.1, 1e-4), (0, 0.1, 1e-3)])
def test_step_decay_and_epoch_times(tmp_path, step, gamma, expected):
    write_tiny_dataset(tmp_path)
    config = make_config("GRU4Rec", "tiny", read_cmd_line=False, config_dict={
        "data_path": str(tmp_path), "epochs": 3, "stopping_step": 10, "show_progress": False,
        "state": "WARNING", "lr_step_size": step, "lr_gamma": gamma, "learning_rate": 1e-3,
        "checkpoint_dir": str(tmp_path / "saved")})
    _, (train, valid, _), _, trainer = build(config)
    trainer.fit(train, valid, saved=False, show_progress=False)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert len(trainer.epoch_times) == 3 and all(t > 0 for t in trainer.epoch_times)
