"""MLflow I/O of the nightly run, by concern: the client and its one error context (:mod:`.client`), the lineage a
version carries (:mod:`.lineage`), the night's run and its records (:mod:`.runs`), the logged model and its files
(:mod:`.models`, :mod:`.pyfunc_model`), the champion, promotion and the leaderboard (:mod:`.promote`). The policy
itself is :mod:`pipeline.gate` (pure)."""
