"""The few-shot core: what training, validation, evaluation, the vision prefix and predict share.

- `episodes`: seeded N-way K-shot episodes over a split's videos (`EpisodeSampler`, `videos_by_class`);
- `loader`: episodes and videos -> model input (`EpisodeLoader`), prepared ahead by worker threads (`Prefetcher`);
- `scoring`: a fixed model's scores of episodes, with per-video and per-class caches (`EpisodeScorer`);
- `checkpoints`: which checkpoint a run uses, and writing, reading and checking checkpoints;
- `devices`: the device a setting names, the torchrun rank and world size;
- `prepare`: the model, loader and frame store of a config and its frames/embeddings inputs.

Nothing here imports a stage package (train, evaluate, prefix, predict, pretrain): they import this.
"""
