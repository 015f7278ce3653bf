"""The Accelerator under real launches: default construction forms one group on CPU, settings arrive."""

from __future__ import annotations

from launching import WORKERS, overdrive_launch, torchrun

PROBE = str(WORKERS / "accel_probe.py")


def _assert_both_ranks(out: str, mp: str = "no") -> None:
    for rank in (0, 1):
        assert f"ACCEL OK rank={rank} world=2 mp={mp} gathered=[1, 11]" in out, out


def test_overdrive_launch_default_accelerator_forms_a_two_process_group() -> None:
    _assert_both_ranks(overdrive_launch("--num_processes", "2", PROBE).stdout)


def test_plain_torchrun_default_accelerator() -> None:
    _assert_both_ranks(torchrun(PROBE).stdout)


def test_accelerate_cpu_incantation_and_mixed_precision_flag() -> None:
    # Accelerate's working CPU command: --multi_gpu with Accelerator(cpu=True); bf16 from the launch flag.
    out = overdrive_launch("--multi_gpu", "--num_processes", "2", "--mixed_precision", "bf16", PROBE,
                           "--cpu_true", "--expect_mp", "bf16").stdout
    _assert_both_ranks(out, mp="bf16")
