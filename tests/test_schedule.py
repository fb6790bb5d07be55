import math

import pytest

from prunekit import PrunekitError
from prunekit.engine.schedule import Schedule, num_prunes, oneshot_sigma0, paper_cycle_count
from prunekit.engine.schedule import compression


@pytest.mark.parametrize("sigma0,target", [(32, 64), (32, 128), (32, 256), (32, 512), (32, 4096), (16, 1000)])
def test_general_count_reproduces_the_paper_at_rho_half(sigma0, target):
    # The paper's C counts cycles after the first fine-tune; prunes = C + 1 at rho = 0.5.
    assert num_prunes(sigma0, target, 0.5) == paper_cycle_count(sigma0, target, 0.5) + 1
    assert num_prunes(sigma0, target, 0.5) == math.ceil(math.log2(target / sigma0))


def test_general_count_for_other_rho():
    assert num_prunes(32, 512, 0.75) == 2  # 32 -> 128 -> 512
    assert num_prunes(32, 512, 0.25) == 10  # (4/3)^10 = 17.8 >= 16 > (4/3)^9
    assert paper_cycle_count(32, 512, 0.75) != num_prunes(32, 512, 0.75) - 1  # the paper's form assumes rho = 0.5


def test_iterative_widths_halve_and_end_exactly_at_target():
    fan = 8832  # Swin-T: sum of m_i over its 24 adapters
    s = Schedule(rho=0.5, sigma_target=512)
    widths = s.widths(276, fan)
    assert widths == [276, 138, 69, 34, 17]  # round(0.5 * 69) = 35 removed; the last lands on floor(8832 / 512)
    assert compression(fan, widths[-1]) >= 512 > compression(fan, widths[-1] + 1)
    assert s.cycles(276, fan) == 5
    assert s.prune_after(276, fan) == {0: 138, 1: 69, 2: 34, 3: 17}


def test_oneshot_prunes_once_with_the_iterative_budget():
    s = Schedule(rho=0.5, sigma_target=512, mode="oneshot", sigma_reference=32)
    assert oneshot_sigma0(512, 0.5) == 256
    fan = 8832
    start = round(fan / 256)
    assert s.prune_after(start, fan) == {0: 17}
    assert s.cycles(start, fan) == Schedule(rho=0.5, sigma_target=512).cycles(276, fan) == 5


@pytest.mark.parametrize("kwargs,match", [
    ({"rho": 0.0}, r"rho: expected a fraction in \(0, 1\), got 0.0"),
    ({"rho": 1.5}, "rho"),
    ({"mode": "once"}, "mode: expected 'iterative' or 'oneshot', got 'once'"),
])
def test_bad_schedule_names_the_field(kwargs, match):
    with pytest.raises(PrunekitError, match=match):
        Schedule(**kwargs)


def test_target_below_start_and_unreachable_target_are_refused():
    with pytest.raises(PrunekitError, match="sigma_target: expected more than the starting compression sigma0=32"):
        Schedule(sigma_target=16).widths(10, 320)
    with pytest.raises(PrunekitError, match="cannot be reached.*at most 320"):
        Schedule(sigma_target=1000).widths(10, 320)
