"""What the chart's nccl-tests Jobs write, read into the simulator's link calibration: the
launcher's log (several runs) and the -J JSON file; a collective used for a KV link warns."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.cli import main
from simulator.errors import SimInputError
from simulator.nccl_tests import link_from_nccl_tests, parse_nccl_runs, parse_nccl_tests

DATA = Path(__file__).with_name("data")
SIM_DATA = Path(__file__).parents[1] / "simulator" / "data"


def test_a_job_log_holds_one_run_per_test() -> None:
    runs = parse_nccl_runs((DATA / "nccl_job_log.txt").read_text())
    assert [r.test for r in runs] == ["sendrecv_perf", "all_reduce_perf"]
    assert [len(r.rows) for r in runs] == [6, 6]
    assert runs[1].rows[-1].busbw_gbs == pytest.approx(22.64)


def test_the_log_gives_the_point_to_point_link_without_a_warning() -> None:
    warnings: list[str] = []
    link = link_from_nccl_tests(DATA / "nccl_job_log.txt", warnings.append)
    assert link.bandwidth == pytest.approx(44.83e9) and link.latency_s == pytest.approx(11.2e-6)
    assert warnings == []


def test_json_output_reads_like_the_text() -> None:
    (run,) = parse_nccl_runs((DATA / "sendrecv_perf.json").read_text())
    assert run.test == "sendrecv_perf"
    text_run = parse_nccl_runs((DATA / "nccl_job_log.txt").read_text())[0]
    assert [(r.size_bytes, r.busbw_gbs) for r in run.rows] == [(r.size_bytes, r.busbw_gbs) for r in text_run.rows]
    warnings: list[str] = []
    assert link_from_nccl_tests(DATA / "sendrecv_perf.json", warnings.append).bandwidth == pytest.approx(44.83e9)
    assert warnings == []


def test_an_all_reduce_for_a_kv_link_warns() -> None:
    warnings: list[str] = []
    link = link_from_nccl_tests(DATA / "all_reduce_only.txt", warnings.append)
    assert link.bandwidth == pytest.approx(22.64e9)
    (warning,) = warnings
    assert "all_reduce_perf" in warning and "point-to-point" in warning and "sendrecv_perf" in warning
    named_by_file: list[str] = []
    link_from_nccl_tests(SIM_DATA / "all_reduce_perf_h100x8.txt", named_by_file.append)  # an older log: no name
    assert "all_reduce_perf's bus bandwidth" in named_by_file[0]


def test_the_cli_prints_the_warning(tmp_path, capsys) -> None:
    code = main(["simulate", "--trace", "synthetic:n=40,rate=2,seed=1", "--design", "prefill=H100x1,decode=L40Sx1",
                 "--nccl-tests", f"H100:L40S={DATA / 'all_reduce_only.txt'}"])
    assert code == 0
    assert "warning: " in capsys.readouterr().err


def test_ambiguous_or_broken_output_is_an_error(tmp_path) -> None:
    with pytest.raises(SimInputError, match="holds 2 nccl-tests runs"):
        parse_nccl_tests((DATA / "nccl_job_log.txt").read_text(), "log")
    two_collectives = tmp_path / "two.txt"
    two_collectives.write_text((DATA / "all_reduce_only.txt").read_text() * 2)
    with pytest.raises(SimInputError, match=r"holds 2 nccl-tests runs \(all_reduce_perf, all_reduce_perf\)"):
        link_from_nccl_tests(two_collectives)
    bad = tmp_path / "bad.json"
    bad.write_text('{"args": ["sendrecv_perf"], "results": [{"size": 8, "out_of_place": {"alg_bw": 1}}]}')
    with pytest.raises(SimInputError, match=r"bad.json: results\[0\]: no size, time and bus_bw"):
        link_from_nccl_tests(bad)
