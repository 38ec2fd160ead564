"""A character-level language model on FusedLSTM: train on any text, sample from it.

    fusedlstm train [--text PATH] ...      (train.py)
    fusedlstm sample --checkpoint RUN ...  (sample.py)

Modules: corpus (text, vocabulary, streams), model (CharLM), config (presets),
train (the loop), checkpoint (atomic files), distributed (torchrun), metrics
(metrics.jsonl, loss.png), sample (generation), cli (the two subcommands).
"""
