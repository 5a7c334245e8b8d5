"""Linear evaluation of frozen encoders, shared by ``finetune probe`` and the online probe of pretraining.

* :mod:`.embed`: labeled shard sets -> whole-clip, per-layer pooled features (one forward pass per set);
* :mod:`.linear`: standardized linear probes (ridge or logistic regression), L2 and layer chosen on valid;
* :mod:`.scores`: accuracy and mAP.
"""
