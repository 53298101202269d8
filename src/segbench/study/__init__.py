"""The comparison as one study: networks x datasets x engines, resumable, rendered as the paper's tables.

``study.json`` is the source of truth; every table, CSV, LaTeX file and plot
is rendered from it. Its shape::

    {
      "kind": "study",
      "segbench": "0.1.0", "created": "2026-11-25T11:00:00+00:00",
      "machine": {... as in bench reports: hostname, cpu, cores, gpu, libraries ...},
      "study": {... the study file, parsed: name, out, datasets, networks, engines, recipe, bench ...},
      "rule": "An engine qualifies when ...",          # the ranking rule, in words
      "ranking": {"reference": "torch-fp32", "ratio": 0.99, ...},   # bench.rank.RankRule
      "datasets": [
        {
          "name": "potsdam", "path": "...", "isprs": true, "split": "test",
          "classes": ["impervious_surface", ...],
          "excluded_classes": ["clutter"],             # left out of the class means (ISPRS)
          "networks": [
            {
              "name": "pspnet-r18", "family": "CNN context", "source": "trained" | "imported",
              "status": "ok" | "failed" | "pending", "reason": null | "one sentence",
              "params": 12788000, "gflops": 54.3, "tile": 512, "train_seconds": 812.4,
              "accuracy": {  # segbench eval of the checkpoint on the split (mmseg's IoUMetric
                             # arithmetic), in bench.metrics.metrics_from_counts's shape:
                "miou": 0.71, "macc": ..., "mf1": ..., "oa": ..., "kappa": ..., "pixels": ...,
                "per_class": {"building": {"iou": 0.8, "acc": ..., "f1": ..., ...}, ...}
              },
              "engines": [ ... bench report rows (bench/run.py), each with "network" added:
                  name, backend, precision, device, status, reason, latency{batch1{p50,p90,n..}},
                  scene{megapixels_per_s, km2_per_h, ...}, memory{peak_rss_bytes}, artifact_bytes,
                  accuracy{miou, agreement, ...}, qualified (against this network's reference),
                  and, across every (network, engine) pair of the dataset:
                  "study_rank" (1 = fastest qualified) and "study_pareto" (mIoU vs p50 latency) ]
            }
          ]
        }
      ]
    }
"""
