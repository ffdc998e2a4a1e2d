"""Studies: what trains models and then scores them.

Built on :mod:`nestlearn.train` (the loop, run folders) and :mod:`nestlearn.eval` (the scorers),
never the other way round; only :mod:`nestlearn.cli` imports from here.

* :mod:`~nestlearn.studies.compare`: several model families trained on the same data, one table.
* :mod:`~nestlearn.studies.reproduce`: the paper's tables at a chosen scale, with its report
  (:mod:`~nestlearn.studies.report_md`, :mod:`~nestlearn.studies.reproduce_index`).
* :mod:`~nestlearn.studies.recall`, :mod:`~nestlearn.studies.formal`,
  :mod:`~nestlearn.studies.sniah`: the synthetic-task recipes (train a small model, score it).
* :mod:`~nestlearn.studies.continual`: continual-learning runners.
* :mod:`~nestlearn.studies.vit_optim`: M3 against AdamW and Muon on a small ViT (Fig. 11 / 12).
* :mod:`~nestlearn.studies.demo`: ``nestlearn demo`` (two tiny models trained side by side).
* :mod:`~nestlearn.studies.lm_eval_adapter`: lm-evaluation-harness on a model or a run folder.
"""
