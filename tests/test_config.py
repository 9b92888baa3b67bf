"""The recipe's numbers and everything derived from them (docs/recipe.md, "Training")."""
import pytest

from engine.recipes.seed import Config, lr_factor

PEAK = 1.15 * 1.35 / 512


def test_derived_quantities_match_spec():
    c = Config()
    assert c.steps_per_epoch == 97                  # 50,000 // 512, the partial batch dropped
    assert c.total_steps == 970
    assert c.scheduled_steps == 776                 # 970 - 194
    assert c.warmup_steps == 194                    # 25% of 776 = 0.2 * 970
    assert c.ema_start_step == 8 * 97               # epoch 8, 0-based
    assert c.ema_step_decay == pytest.approx(0.986 ** 2)
    assert c.widths == {"init": 32, "group1": 128, "group2": 256, "group3": 512}


def test_ema_acts_after_the_odd_steps_of_the_last_two_epochs_like_the_release():
    c = Config()
    steps = [step for step in range(c.total_steps) if c.ema_updates_after(step)]
    assert steps == list(range(777, 970, 2))         # 777 (the copy), 779, ..., 969: the last step included
    assert steps[-1] == c.total_steps - 1


def test_learning_rates_per_group():
    c = Config()
    assert c.lr == pytest.approx(1.15 * 1.35 / 512)
    assert c.weight_decay == pytest.approx(0.85 * 4.8e-4 * 512)
    assert c.bias_lr == pytest.approx(1.15 * 1.35 * 32 / 512)
    assert c.bias_weight_decay == pytest.approx(0.85 * 4.8e-4 * 512 / 32)


@pytest.mark.parametrize("step, expected", [
    (0, 0.0),                                        # "from ~0"
    (193, 1.0),                                      # the peak, at the end of 25% of 776 steps
    (194, 1.0 - (1 - 0.135) / (775 - 193)),          # first step down
    (775, 0.135),                                    # the last scheduled step: 0.135 x peak
    (969, 0.135),                                    # the last two epochs stay there
])
def test_lr_schedule_against_spec(step, expected):
    assert lr_factor(step, Config()) == pytest.approx(expected, abs=1e-12)


def test_lr_schedule_is_linear_on_both_ramps():
    c = Config()
    rise = [lr_factor(s, c) for s in range(194)]
    fall = [lr_factor(s, c) for s in range(193, 776)]
    assert all(b > a for a, b in zip(rise, rise[1:]))
    assert all(b < a for a, b in zip(fall, fall[1:]))
    assert lr_factor(100, c) - lr_factor(99, c) == pytest.approx(lr_factor(51, c) - lr_factor(50, c))
    assert lr_factor(500, c) - lr_factor(499, c) == pytest.approx(lr_factor(301, c) - lr_factor(300, c))


@pytest.mark.parametrize("change, message", [
    (dict(batch_size=0), "batch_size"),
    (dict(ema_epochs=10), "ema_epochs"),
    (dict(train_images=100), "smaller than one batch"),
    (dict(momentum=1.5), "momentum"),
    (dict(base_width=15), "even"),
])
def test_bad_values_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        Config(**change)
