"""``mixlm bench dask-backfill``: the local runner and a real 1-worker Dask cluster in one run."""

import json

from click.testing import CliRunner

from mixlm.cli import main


def test_dask_backfill_bench_reports_each_runner(tiny_bundle, tmp_path):
    out = tmp_path / "dask.json"
    result = CliRunner().invoke(main, ["bench", "dask-backfill", "--bundle", str(tiny_bundle), "--items", "150",
                                       "--workers", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [(r["runner"], r["workers"]) for r in report["results"]] == [("local (FnApiRunner)", 0), ("dask", 1)]
    assert all(r["items"] == 150 and r["items_per_s"] > 0 for r in report["results"])
    assert report["results"][1]["cluster_start_s"] > 0
    assert report["results"][0]["torch_threads"] == report["results"][1]["torch_threads"]
    assert set(report["over_local_same_threads"]) == set(report["over_best_local"]) == {"dask_1"}
    assert report["machine"]["cpus"] > 0 and "dask_1" in result.stdout
