"""Active learning: score a catalogue for what volunteers should label next, rank it into a priority queue, and send
the queue to Galaxy Zoo.

- :mod:`~zoobot_pipeline.active.acquisition`: the registry of acquisition functions over catalogue batches (built in:
  mutual information, predictive entropy, seeded random; BALD over classes for classifiers, predictive spread for
  regressors; more with ``register_acquisition``).
- :mod:`~zoobot_pipeline.active.batch_sampling`: stochastic batch acquisition (power, softmax, softrank) as the top K
  of a Gumbel-perturbed key seeded per galaxy.
- :mod:`~zoobot_pipeline.active.exclusions`: skip galaxies by the model's answers (stars, artefacts).
- :mod:`~zoobot_pipeline.active.ranking`: streaming top-K over a whole catalogue with exclusions, quotas and a random
  fraction, and the queue directory with its history; a ``run_key`` makes a rank run happen exactly once.
- :mod:`~zoobot_pipeline.active.manifest`: Zooniverse subject manifest CSV plus one colour image per subject.
- :mod:`~zoobot_pipeline.active.zooniverse`: resumable upload of a manifest into a subject set (panoptes-client).
- :mod:`~zoobot_pipeline.active.votes_merge`: fold new volunteer votes into the labelled set.
"""
