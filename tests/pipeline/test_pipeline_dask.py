"""The calibrate/merge map on Prefect's Dask runner (a real LocalCluster of worker processes) gives exactly what the
threaded runner gives: calibration diagnostics, merged factors, and the written bytes."""

from __future__ import annotations

import pytest
import torch
from pipeline_helpers import file_hashes, nightly, reference_merge


@pytest.mark.slow  # a LocalCluster of worker processes: ~25 s, the default tier's slowest test (CI runs the slow tier)
def test_dask_local_cluster_matches_threads(project, tmp_path):
    from distributed import LocalCluster
    from prefect import flow, unmapped
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from pipeline import merging, sources, steps
    from pipeline.settings import load_settings

    settings = load_settings(project)
    recipe = settings.space.candidates[0].recipe_obj()
    fetched = [sources.fetch_entry(settings, e) for e in settings.catalog.adapters]
    aset = merging.load_set(fetched)
    groups = merging.plan_groups(aset, recipe, layers_per_group=1)  # one task per (shape, layer): 8 tasks
    assert len(groups) >= 6

    @flow
    def calibrate_only(aset, groups, recipe):
        cals = steps.calibrate.map(unmapped(aset), groups, unmapped(recipe))
        merged = steps.merge_group.map(cals, unmapped(recipe))
        return [c.result() for c in cals], [m.result() for m in merged]

    threads = calibrate_only.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(aset, groups, recipe)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        dask = calibrate_only.with_options(task_runner=runner)(aset, groups, recipe)
        # the whole flow with the Dask runner writes the bytes of `pico merge` (= the threaded flow's, tested in
        # test_pipeline_flow), and registers them
        dask_flow = nightly(project, task_runner={"kind": "dask", "address": cluster.scheduler_address})
    for (cal_t, cal_d), (res_t, res_d) in zip(zip(*[threads[0], dask[0]]), zip(threads[1], dask[1])):
        assert cal_t.modules == cal_d.modules
        assert torch.equal(cal_t.source_norms, cal_d.source_norms)
        assert cal_t.diagnostics.keys() == cal_d.diagnostics.keys() and cal_t.diagnostics
        for key in cal_t.diagnostics:
            assert torch.equal(cal_t.diagnostics[key], cal_d.diagnostics[key]), key
        for a, b in zip(res_t, res_d):
            assert a.module == b.module and torch.equal(a.b, b.b) and torch.equal(a.a, b.a)
    assert not dask_flow["cached_merge"] and dask_flow["runner"] == "DaskTaskRunner"
    ref = reference_merge(project, tmp_path / "ref")
    got = file_hashes(dask_flow["store"])
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert got[name] == ref[name], name
    # the same night on threads: the same bytes are the same model version (device class "cpu" vs "dask-auto" keys
    # two cache entries, but the registry matches on the bytes)
    threaded_flow = nightly(project, paths={"work": "build/pipeline-threads"})
    assert threaded_flow["runner"] == "ThreadPoolTaskRunner" and threaded_flow["store"] != dask_flow["store"]
    assert file_hashes(threaded_flow["store"]) == got
    assert threaded_flow["registered"]["version"] == dask_flow["registered"]["version"] == "1"
